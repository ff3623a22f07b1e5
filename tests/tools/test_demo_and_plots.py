"""tools/demo.py draws the evaluation's predictions; tools/plot_metrics.py plots a run."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import QUICK_CONFIG, REPO, load_tool


def _val_images(quick_run):
    """(image id, path) of the foreign validation images, in json order; all 16 are in
    nested folders, a mix of JPEG, colour PNG and grayscale PNG."""
    foreign = quick_run["foreign"]
    with open(foreign["val"]) as f:
        images = json.load(f)["images"]
    return [(im["id"], os.path.join(foreign["images"], im["file_name"])) for im in images]


def test_demo_writes_drawn_pngs_matching_eval_predictions(quick_run, tmp_path):
    demo = load_tool("demo")
    foreign = quick_run["foreign"]
    val = _val_images(quick_run)
    weights = os.path.join(quick_run["output_dir"], "model_final.pth")
    out = tmp_path / "demo"
    written = demo.main(["--config-file", QUICK_CONFIG, "--input"] + [p for _, p in val]
                        + ["--output", str(out), "--dataset", "foreign_val", foreign["val"],
                           foreign["images"], "--opts", "MODEL.WEIGHTS", weights])
    assert len(written) == 16
    # the class names drawn are the dataset's (registered through --dataset)
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("foreign_val").thing_classes[0] == "thing_3"
    first_id, first_path = val[0]
    src = cv2.imread(first_path)
    drawn = cv2.imread(written[0])
    assert drawn.shape[:2] == (2 * src.shape[0], 2 * src.shape[1])  # Visualizer scale 2
    plain = cv2.resize(src, drawn.shape[1::-1])
    assert np.abs(drawn.astype(int) - plain.astype(int)).mean() > 1.0  # something was drawn

    # the demo predictor gives exactly the evaluation's predictions (same thresholds/activation)
    from detectron2.engine import DefaultPredictor

    cfg = demo.setup_cfg(demo.get_parser().parse_args(
        ["--config-file", QUICK_CONFIG, "--input", "x", "--output", "y", "--opts",
         "MODEL.WEIGHTS", weights]))
    pred = DefaultPredictor(cfg)(src)["instances"].to("cpu")
    import glob

    (res_path,) = glob.glob(os.path.join(quick_run["output_dir"], "inference", "**",
                                         "coco_instances_results.json"), recursive=True)
    with open(res_path) as f:
        eval_dets = [d for d in json.load(f) if d["image_id"] == first_id]
    assert len(eval_dets) == len(pred) > 0
    assert sorted(d["score"] for d in eval_dets) == pytest.approx(sorted(pred.scores.tolist()),
                                                                  abs=1e-5)


def test_plot_metrics_writes_pngs(quick_run, tmp_path):
    plot = load_tool("plot_metrics")
    paths = plot.plot_metrics(os.path.join(quick_run["output_dir"], "metrics.json"), str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["eval.png", "losses.png", "lr.png"]
    for p in paths:
        img = cv2.imread(p)
        assert img is not None and img.shape[0] > 100 and img.std() > 5


def test_plot_metrics_rejects_empty_file(tmp_path):
    plot = load_tool("plot_metrics")
    p = tmp_path / "metrics.json"
    p.write_text("")
    with pytest.raises(ValueError, match="no metrics"):
        plot.plot_metrics(str(p))


def test_demo_with_lrp_optimal_class_thresholds(quick_run, tmp_path):
    """The per-class LRP-optimal thresholds saved by the evaluation filter the demo's output."""
    import glob

    from rsloss_d2.evaluation import load_class_thresholds

    demo = load_tool("demo")
    (thr_json,) = glob.glob(os.path.join(quick_run["output_dir"], "inference", "**",
                                         "lrp_optimal_thresholds.json"), recursive=True)
    thresholds = load_class_thresholds(thr_json)
    assert thresholds and all(0 <= t <= 1 for t in thresholds.values())
    weights = os.path.join(quick_run["output_dir"], "model_final.pth")
    val = [p for _, p in _val_images(quick_run)]
    args = ["--config-file", QUICK_CONFIG, "--input"] + val + [
        "--output", str(tmp_path), "--opts", "MODEL.WEIGHTS", weights]
    from detectron2.engine import DefaultPredictor

    cfg = demo.setup_cfg(demo.get_parser().parse_args(args))
    predictor = DefaultPredictor(cfg)
    kept_total, all_total = 0, 0
    for path in val[:6]:
        inst = predictor(cv2.imread(path))["instances"].to("cpu")
        kept = demo.filter_predictions(inst, 0.0, thresholds)
        for c, s in zip(kept.pred_classes.tolist(), kept.scores.tolist()):
            assert s >= thresholds.get(c, 0.0)
        # nothing that passes its class threshold is dropped
        expect = sum(s >= thresholds.get(c, 0.0) for c, s in zip(inst.pred_classes.tolist(),
                                                                 inst.scores.tolist()))
        assert len(kept) == expect
        kept_total, all_total = kept_total + len(kept), all_total + len(inst)
    assert kept_total < all_total  # the thresholds do remove low-scoring predictions
    written = demo.main(["--config-file", QUICK_CONFIG, "--input"] + val + [
        "--output", str(tmp_path / "thr"), "--class-thresholds", thr_json,
        "--opts", "MODEL.WEIGHTS", weights])
    assert len(written) == 16


def test_demo_names_skips_and_counts(tmp_path, capsys):
    """Outputs keep their input's name and format (x.jpg and x.png do not collide, a name met
    twice gets _1), an unreadable image is skipped with a warning and counted, files of other
    extensions are listed. A from-scratch model: only the file handling is under test."""
    from PIL import Image

    demo = load_tool("demo")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pixels = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    for path in (a / "x.jpg", a / "x.png", a / "y.webp", b / "x.jpg"):
        Image.fromarray(pixels).save(path)
    (a / "fake.jpg").write_text("not an image")
    (a / "notes.txt").write_text("hello")
    Image.fromarray(pixels).save(a / "z.gif")
    assert ".webp" in demo.IMAGE_EXTS and ".gif" not in demo.IMAGE_EXTS
    out = tmp_path / "out"
    written = demo.main(["--config-file", QUICK_CONFIG, "--input", str(a), str(b / "x.jpg"),
                         "--output", str(out), "--opts", "MODEL.WEIGHTS", "",
                         "MODEL.DEVICE", "cpu"])
    names = [os.path.basename(p) for p in written]
    assert names == ["x.jpg", "x.png", "y.webp", "x_1.jpg"]
    assert sorted(os.listdir(out)) == sorted(names)
    formats = {n: Image.open(out / n).format for n in names}
    assert formats == {"x.jpg": "JPEG", "x.png": "PNG", "y.webp": "WEBP", "x_1.jpg": "JPEG"}
    assert Image.open(out / "x.png").size == (64, 48)  # drawn at scale 2
    log = capsys.readouterr().out
    assert f"demo: warning: skipped {a / 'fake.jpg'}: cannot be read as an image" in log
    assert "skipped 2 files that are not" in log and "notes.txt" in log and "z.gif" in log
    assert "demo: wrote 4 images" in log and "1 unreadable inputs skipped" in log
