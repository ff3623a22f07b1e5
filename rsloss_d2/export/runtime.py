"""Running an exported file inside Detectron2 (``--run-eval``, the tests, the benchmark).

:class:`ExportedPredictor` loads ``model.ts`` (``torch.jit.load``) or ``model.onnx`` (ONNX
Runtime, CPU) and maps one (3, H, W) float32 image to the output tuple of its family.
:func:`eval_wrapper` turns it into a model of Detectron2's evaluators: batched inputs with
``height`` / ``width`` → ``[{"instances": Instances}]`` at the original size (Detectron2's
``detector_postprocess``; YOLACT / SOLOv2 masks, which are at the input size, are resized).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from .families import family_of, output_names

__all__ = ["ExportedPredictor", "eval_wrapper"]


class ExportedPredictor:
    """Callable over an exported file: ``predictor(image) -> tuple of torch tensors``.

    Args:
        path: ``*.ts`` (TorchScript) or ``*.onnx``.
        num_threads: CPU threads of ONNX Runtime's intra-op pool (None: its default);
            TorchScript uses ``torch.set_num_threads`` of the caller.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        self.is_onnx = path.endswith(".onnx")
        if self.is_onnx:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if num_threads:
                opts.intra_op_num_threads = num_threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        else:
            import torchvision  # noqa: F401  (registers torchvision::nms / roi_align)

            self.module = torch.jit.load(path, map_location="cpu")

    @torch.no_grad()
    def __call__(self, image: torch.Tensor):
        if self.is_onnx:
            outs = self.session.run(None, {self.input_name: image.cpu().numpy()})
            return tuple(torch.from_numpy(o) for o in outs)
        return tuple(self.module(image))


def eval_wrapper(predictor, model):
    """``batched_inputs -> [{"instances": Instances}]`` of the exported ``predictor`` of
    ``model``'s family (``model`` gives the family and output names; it is not run)."""
    family = family_of(model)
    names = output_names(model)

    def run(batched_inputs):
        results = []
        for inp in batched_inputs:
            image = inp["image"].float()
            h, w = image.shape[-2:]
            out = dict(zip(names, predictor(image)))
            inst = Instances((h, w), pred_boxes=Boxes(out["boxes"]), scores=out["scores"],
                             pred_classes=out["classes"])
            height, width = inp.get("height", h), inp.get("width", w)
            if family in ("yolact", "solov2"):
                masks = out["masks"]
                if masks.shape[0] and (height, width) != (h, w):
                    masks = F.interpolate(masks[None].float(), size=(height, width),
                                          mode="bilinear", align_corners=False)[0] > 0.5
                scale = torch.tensor([width / w, height / h] * 2, dtype=out["boxes"].dtype)
                res = Instances((height, width), pred_boxes=Boxes(out["boxes"] * scale),
                                scores=out["scores"], pred_classes=out["classes"],
                                pred_masks=masks.reshape(-1, height, width))
            else:
                if "mask_probs" in out:
                    inst.pred_masks = out["mask_probs"]
                res = detector_postprocess(inst, height, width)
            results.append({"instances": res})
        return results

    return run
