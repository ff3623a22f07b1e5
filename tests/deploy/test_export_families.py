"""Every family exported to TorchScript and ONNX equals the eager model on 5 shapes_val images of
other sizes than the trace sample: same number of detections, boxes / scores within 1e-4
(absolute + relative: `allclose(rtol=1e-4, atol=1e-4)`), the
same classes, masks with IoU ≥ 0.99 (R-CNN mask probabilities within 1e-4); and the exported
files load and run in a fresh process without rsloss_d2 or Detectron2 (tools/deploy/run_exported.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from _deploy_helpers import (
    FAMILY_CONFIGS,
    REPO,
    mask_iou,
    trace_sample,
    trained_model,
    val_images,
)

RUN_EXPORTED = os.path.join(REPO, "tools", "deploy", "run_exported.py")
TOL = 1e-4


@pytest.fixture(scope="module")
def datasets_root(shapes_root):
    from rsloss_d2.data import register_shapes_datasets

    register_shapes_datasets(shapes_root)
    yield shapes_root
    register_shapes_datasets()


def _close(a, b):
    return torch.allclose(a.float(), b.float(), rtol=TOL, atol=TOL)


def _eager_order(names, eager, exported):
    """For each eager detection, the exported one with its class, score and box (within TOL),
    the first unmatched in output order: two detections whose scores differ by less than the
    runtimes' rounding (~1e-7) may come out of the sort in either order."""
    scores, boxes, classes = (names.index(k) for k in ("scores", "boxes", "classes"))
    exp = [torch.as_tensor(np.asarray(x)) for x in exported]
    order, used = [], set()
    for i in range(eager[0].shape[0]):
        match = next((j for j in range(exp[0].shape[0]) if j not in used
                      and int(exp[classes][j]) == int(eager[classes][i])
                      and _close(exp[scores][j], eager[scores][i])
                      and _close(exp[boxes][j], eager[boxes][i])), None)
        if match is None:  # no counterpart: compare in output order (the check below fails)
            return list(range(exp[0].shape[0]))
        order.append(match)
        used.add(match)
    return order


def assert_same(names, eager, exported, where):
    n = eager[0].shape[0]
    assert n > 0, f"{where}: the eager model has no detection (the test needs some)"
    assert exported[0].shape[0] == n, f"{where}: {exported[0].shape[0]} detections, eager {n}"
    order = torch.as_tensor(_eager_order(names, eager, exported), dtype=torch.long)
    for name, a, b in zip(names, eager, exported):
        b = torch.as_tensor(np.asarray(b))[order]
        assert a.shape == b.shape, (where, name, a.shape, b.shape)
        if name == "masks":
            iou = mask_iou(a, b)
            assert iou.min() >= 0.99, (where, name, iou.min())
        elif name == "classes":
            assert torch.equal(a, b), (where, name)
        else:
            # fp32: ONNX Runtime's kernels round differently; a decoded box coordinate of
            # ~100 px then differs by a few 1e-4 px, hence relative as well as absolute 1e-4
            diff = (a.float() - b.float()).abs().max()
            assert torch.allclose(a.float(), b.float(), rtol=TOL, atol=TOL), (
                where, name, float(diff))


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_exported_equals_eager(family, datasets_root, tmp_path):
    from rsloss_d2.export import eager_outputs, export_model, output_names
    from rsloss_d2.export.runtime import ExportedPredictor

    cfg, model = trained_model(family, datasets_root)
    sample = trace_sample(cfg)
    images = val_images(cfg)
    assert all(tuple(x.shape) != tuple(sample.shape) for x in images)
    names = output_names(model)
    paths = {fmt: export_model(model, sample, str(tmp_path / fmt), fmt)
             for fmt in ("torchscript", "onnx")}
    assert sorted(os.listdir(tmp_path / "onnx")) == ["model.onnx"]  # no temporary file left
    predictors = {fmt: ExportedPredictor(p) for fmt, p in paths.items()}
    for i, image in enumerate(images):
        eager = eager_outputs(model, image)
        for fmt, predictor in predictors.items():
            assert_same(names, eager, predictor(image), f"{family} {fmt} image {i}")

    # a fresh process: no rsloss_d2 / Detectron2, outputs equal to the eager model's
    image_file = str(tmp_path / "image.png")
    _write_image(cfg, images[1], image_file)
    eager = eager_outputs(model, images[1])
    for fmt, path in paths.items():
        npz = str(tmp_path / f"{fmt}.npz")
        code = ("import runpy, sys; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__'); "
                "bad = [m for m in ('rsloss_d2', 'detectron2') if m in sys.modules]; "
                "assert not bad, bad")
        args = [RUN_EXPORTED, path, image_file, "--min-size", "0", "--output",
                str(tmp_path / f"{fmt}.png"), "--save-outputs", npz]
        if cfg.INPUT.FORMAT == "RGB":
            args.append("--rgb")
        proc = subprocess.run([sys.executable, "-c", code] + args, capture_output=True,
                              text=True, timeout=300, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        saved = np.load(npz)
        assert_same(names, eager, [saved[n] for n in names], f"{family} {fmt} subprocess")
        assert os.path.getsize(str(tmp_path / f"{fmt}.png")) > 0


def _write_image(cfg, image, path):
    """(3, H, W) float tensor of integer pixels in cfg.INPUT.FORMAT → a lossless RGB file."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    if cfg.INPUT.FORMAT == "BGR":
        pixels = pixels[:, :, ::-1]
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


@pytest.mark.parametrize("family", ["solo", "decoupled_solo"])
def test_solo_level_without_candidates(family, datasets_root, tmp_path):
    """SOLO / Decoupled SOLO with a score threshold at the trace sample's weakest level maximum:
    that level has no candidate in the trace, and its empty tensors flow through the exported
    graphs (exported equals eager, also on images with other empty levels)."""
    import dataclasses

    from rsloss_d2.export import eager_outputs, export_model, output_names
    from rsloss_d2.export.runtime import ExportedPredictor
    from rsloss_d2.modeling.solov2.inference import point_nms
    from rsloss_d2.modeling.solov2.instance_head import split_level_features

    cfg, model = trained_model(family, datasets_root)
    sample = trace_sample(cfg)
    with torch.no_grad():
        images = model.preprocess_image([{"image": sample}])
        features = model.backbone(images.tensor)
        levels = split_level_features([features[f] for f in model.instance_in_features])
        level_max = [float(point_nms(x.sigmoid()).max()) for x in model.ins_head(levels)[0]]
    old = model.test_cfg
    model.test_cfg = dataclasses.replace(old, score_thr=min(level_max))
    try:
        paths = {fmt: export_model(model, sample, str(tmp_path / fmt), fmt)
                 for fmt in ("torchscript", "onnx")}
        predictors = {fmt: ExportedPredictor(p) for fmt, p in paths.items()}
        compared = 0
        for i, image in enumerate(val_images(cfg)):
            eager = eager_outputs(model, image)
            for fmt, predictor in predictors.items():
                out = predictor(image)
                assert out[0].shape[0] == eager[0].shape[0], (fmt, i)
                if eager[0].shape[0]:
                    assert_same(output_names(model), eager, out, f"{family} {fmt} image {i}")
                    compared += 1
        assert compared > 0
    finally:
        model.test_cfg = old
