"""tools/deploy/export_model.py end to end: Detectron2's options, ONNX export of a trained
checkpoint evaluated through ONNX Runtime (--run-eval), and a clear exit for an unsupported method."""
import os
import subprocess
import sys

import pytest

from _deploy_helpers import FAMILY_CONFIGS, REPO, _COMMON, trained_model

EXPORT = os.path.join(REPO, "tools", "deploy", "export_model.py")


@pytest.fixture(scope="module")
def datasets_root(shapes_root):
    from rsloss_d2.data import register_shapes_datasets

    register_shapes_datasets(shapes_root)
    yield shapes_root
    register_shapes_datasets()


def run_export(args, datasets_root):
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, EXPORT] + args, env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)


def test_onnx_export_and_run_eval(datasets_root, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    cfg, model = trained_model("rs_paa", datasets_root)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    config, opts = FAMILY_CONFIGS["rs_paa"]
    out = tmp_path / "export"
    proc = run_export(["--config-file", os.path.join(REPO, "configs", config), "--format", "onnx",
                       "--export-method", "tracing", "--output", str(out), "--run-eval"]
                      + _COMMON + opts + ["MODEL.WEIGHTS", str(tmp_path / "model.pth")],
                      datasets_root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (out / "model.onnx").is_file()
    assert "outputs (in order): ['boxes', 'scores', 'classes']" in proc.stdout
    assert "copypaste: AP,AP50" in proc.stdout  # COCO evaluation of the ONNX Runtime outputs


def test_unsupported_method_exits_with_message(datasets_root, tmp_path):
    config, opts = FAMILY_CONFIGS["rs_yolact"]
    out = tmp_path / "export"
    proc = run_export(["--config-file", os.path.join(REPO, "configs", config),
                       "--export-method", "scripting", "--output", str(out)] + _COMMON + opts,
                      datasets_root)
    assert proc.returncode == 2, proc.stdout[-4000:]
    assert "YOLACT's inference" in proc.stdout and "--export-method tracing" in proc.stdout
    assert os.listdir(out) == []
