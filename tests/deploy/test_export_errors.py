"""Bad input of the export: a method the model does not support, a sample without detections, a
failing write — a clear error naming the part and the method that works, and no file left."""
import os

import pytest
import torch

from _deploy_helpers import trace_sample, trained_model


@pytest.fixture(scope="module")
def datasets_root(shapes_root):
    from rsloss_d2.data import register_shapes_datasets

    register_shapes_datasets(shapes_root)
    yield shapes_root
    register_shapes_datasets()


@pytest.mark.parametrize("family,part", [("rs_mask_rcnn", "RSStandardROIHeads"),
                                         ("rs_paa", "RankingRetinaNet's inference"),
                                         ("rs_yolact", "YOLACT's inference"),
                                         ("rs_solov2", "SOLOv2's inference"),
                                         ("solo", "SOLOv2's inference"),
                                         ("decoupled_solo", "SOLOv2's inference")])
def test_scripting_unsupported_names_part_and_tracing(family, part, datasets_root, tmp_path):
    from rsloss_d2.export import ExportError, export_model

    cfg, model = trained_model(family, datasets_root)
    with pytest.raises(ExportError) as e:
        export_model(model, trace_sample(cfg), str(tmp_path), "torchscript", "scripting")
    assert part in str(e.value) and "--export-method tracing" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_onnx_needs_tracing(datasets_root, tmp_path):
    from rsloss_d2.export import ExportError, export_model

    cfg, model = trained_model("rs_paa", datasets_root)
    with pytest.raises(ExportError, match="--export-method tracing with --format onnx"):
        export_model(model, trace_sample(cfg), str(tmp_path), "onnx", "scripting")
    assert os.listdir(tmp_path) == []


def test_sample_without_detections_is_refused(datasets_root, tmp_path):
    from rsloss_d2.export import ExportError, export_model

    cfg, model = trained_model("rs_paa", datasets_root)
    blank = torch.full_like(trace_sample(cfg), 90.0)  # background colour only
    old = model.test_score_thresh
    model.test_score_thresh = 1.0  # and no score can pass
    try:
        for fmt in ("torchscript", "onnx"):
            with pytest.raises(ExportError, match="no detection"):
                export_model(model, blank, str(tmp_path), fmt)
    finally:
        model.test_score_thresh = old
    assert os.listdir(tmp_path) == []


def test_failed_onnx_write_leaves_no_file(datasets_root, tmp_path, monkeypatch):
    from rsloss_d2.export import export_model

    cfg, model = trained_model("rs_paa", datasets_root)

    def half_written(model, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, trace_sample(cfg), str(tmp_path), "onnx")
    assert os.listdir(tmp_path) == []
