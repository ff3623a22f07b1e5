#!/usr/bin/env python
"""Run a model exported by tools/deploy/export_model.py on one image and draw its detections —
without rsloss_d2 or Detectron2: numpy, Pillow and either torch + torchvision (``model.ts``) or
onnxruntime (``model.onnx``).

    python tools/deploy/run_exported.py export_rs_mask/model.onnx image.jpg --output out.png \\
        --min-size 192 --max-size 288 --score 0.3

The image is prepared as Detectron2's test loader does (``ResizeShortestEdge`` with Pillow's
bilinear resize; pass the config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, or --min-size 0 to keep
the size, as YOLACT configs do) and given to the model as a (3, H, W) float32 tensor in BGR
order (INPUT.FORMAT "BGR"; use --rgb for RGB models). Outputs (tools/deploy/README.md): boxes,
scores, classes, then R-CNN ``mask_probs`` (N, 1, M, M) to paste into each box, or YOLACT /
SOLOv2 ``masks`` (N, H, W) bool. Boxes and masks are drawn at the resized size.
"""
import argparse
import sys

import numpy as np
from PIL import Image, ImageDraw

OUTPUT_NAMES = {3: ("boxes", "scores", "classes")}  # 4 outputs: the 4th is masks / mask_probs


def resize_shortest_edge(img: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """Detectron2's ResizeShortestEdge (test: short side = min_size, long side ≤ max_size)."""
    if min_size <= 0:
        return img
    h, w = img.shape[:2]
    scale = min_size / min(h, w)
    newh, neww = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    newh, neww = int(newh + 0.5), int(neww + 0.5)
    return np.asarray(Image.fromarray(img).resize((neww, newh), Image.BILINEAR))


def load(path: str, threads: int = 0):
    """``run(image (3, H, W) float32 numpy) -> dict of numpy outputs`` of an exported file."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]

        def run(image):
            return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: image})))
        return run

    import torch
    import torchvision  # noqa: F401  (the exported graph calls torchvision::nms / roi_align)

    if threads:
        torch.set_num_threads(threads)
    module = torch.jit.load(path, map_location="cpu")

    def run(image):
        with torch.no_grad():
            outs = [o.numpy() for o in module(torch.from_numpy(image))]
        names = OUTPUT_NAMES.get(len(outs)) or (
            ("boxes", "scores", "classes", "mask_probs") if outs[3].ndim == 4
            else ("boxes", "scores", "classes", "masks"))
        return dict(zip(names, outs))
    return run


def paste_mask(prob: np.ndarray, box: np.ndarray, h: int, w: int, threshold=0.5) -> np.ndarray:
    """An R-CNN (M, M) mask probability map pasted into its box of an (h, w) image (bilinear
    resize to the box, threshold), as Detectron2's paste_masks_in_image up to interpolation."""
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), w), min(max(y1, y0 + 1), h)
    out = np.zeros((h, w), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return out
    m = Image.fromarray((prob * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    out[y0:y1, x0:x1] = np.asarray(m) >= threshold * 255
    return out


def draw(rgb: np.ndarray, out: dict, score_thresh: float) -> Image.Image:
    h, w = rgb.shape[:2]
    canvas = rgb.astype(np.float32)
    rng = np.random.default_rng(0)
    keep = out["scores"] >= score_thresh
    boxes, scores, classes = out["boxes"][keep], out["scores"][keep], out["classes"][keep]
    colours = rng.integers(40, 255, size=(max(len(boxes), 1), 3))
    for i, box in enumerate(boxes):
        if "masks" in out:
            mask = out["masks"][keep][i]
        elif "mask_probs" in out:
            mask = paste_mask(out["mask_probs"][keep][i, 0], box, h, w)
        else:
            continue
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * colours[i]
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    for i, (box, s, c) in enumerate(zip(boxes, scores, classes)):
        pen.rectangle([float(v) for v in box], outline=tuple(int(v) for v in colours[i]))
        pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{int(c)}: {s:.2f}",
                 fill=tuple(int(v) for v in colours[i]))
    return img


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model.ts or model.onnx")
    p.add_argument("image", help="image file")
    p.add_argument("--output", default="detections.png")
    p.add_argument("--min-size", type=int, default=800, help="INPUT.MIN_SIZE_TEST (0: no resize)")
    p.add_argument("--max-size", type=int, default=1333, help="INPUT.MAX_SIZE_TEST")
    p.add_argument("--rgb", action="store_true", help="the model takes RGB (INPUT.FORMAT RGB)")
    p.add_argument("--score", type=float, default=0.3, help="draw detections above this score")
    p.add_argument("--save-outputs", default="", help="also save the raw outputs (.npz)")
    args = p.parse_args(argv)

    rgb = resize_shortest_edge(np.asarray(Image.open(args.image).convert("RGB")),
                               args.min_size, args.max_size)
    pixels = rgb if args.rgb else rgb[:, :, ::-1]
    image = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
    out = load(args.model)(image)
    if args.save_outputs:
        np.savez(args.save_outputs, **out)
    draw(rgb, out, args.score).save(args.output)
    print(f"{len(out['scores'])} detections ({int((out['scores'] >= args.score).sum())} drawn, "
          f"score ≥ {args.score}) → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
