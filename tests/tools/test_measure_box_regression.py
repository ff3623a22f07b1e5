"""tools/diagnostics/measure_box_regression.py: IoU of the positive RPN proposals before / after the box
head's regression (appended GT boxes left out)."""
import torch

from conftest import load_tool


def test_regression_gain_of_known_deltas(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_root)
    tool = load_tool("measure_box_regression")
    from rsloss_d2 import engine as train_net
    from detectron2.checkpoint import DetectionCheckpointer
    from rsloss_d2.modeling.box_losses import aligned_iou

    args = train_net.argument_parser().parse_args(
        ["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
         "SOLVER.IMS_PER_BATCH", "2"])
    cfg = train_net.build_cfg(args)
    model = train_net.Trainer.build_model(cfg)
    pred = model.roi_heads.box_predictor.bbox_pred
    # zero regression: every box stays its proposal -> after == before
    torch.nn.init.zeros_(pred.weight)
    torch.nn.init.zeros_(pred.bias)
    weights = str(tmp_path / "zero.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("zero")
    before, after = tool.main(["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
                               "--weights", weights, "--batches", "2",
                               "SOLVER.IMS_PER_BATCH", "2"])
    assert before.numel() > 0
    assert torch.allclose(before, after, atol=1e-6)
    assert (before < 1).all()  # appended GT boxes (IoU 1) are left out
    # a constant delta (widen every box by exp(1/5)) changes every IoU as computed by hand
    torch.nn.init.constant_(pred.bias.view(-1, 4)[:, 2:], 1.0)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("wide")
    before2, after2 = tool.main(["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
                                 "--weights", str(tmp_path / "wide.pth"), "--batches", "2",
                                 "SOLVER.IMS_PER_BATCH", "2"])
    assert torch.allclose(before2, before)  # same batches, same proposals
    assert not torch.allclose(after2, before2, atol=1e-3)
    assert tool.summary_line("x", before2, after2).startswith(f"x: {before.numel()} positive")


def test_fixed_batch_fit_traces(shapes_root, tmp_path, monkeypatch):
    """--fit: each loss variant starts from the same boxes; the λ·L_box-only variant changes the
    boxes, and the traced λ is the RS head's (L_rank + L_sort) / L_box."""
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_root)
    tool = load_tool("measure_box_regression")
    from rsloss_d2 import engine as train_net
    from detectron2.checkpoint import DetectionCheckpointer

    args = train_net.argument_parser().parse_args(
        ["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
         "SOLVER.IMS_PER_BATCH", "2"])
    torch.manual_seed(0)
    model = train_net.Trainer.build_model(train_net.build_cfg(args))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("init")
    traces = tool.main(["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
                        "--weights", str(tmp_path / "init.pth"), "--fit", "5",
                        "SOLVER.IMS_PER_BATCH", "2"])
    assert set(traces) == {"rs", "rs_box", "rs_cls_l1"}
    starts = {t[0][1] for t in traces.values()}
    assert len(starts) == 1  # same batch, same weights: same first IoU
    assert [s for s, _, _ in traces["rs_box"]] == [0, 1, 2, 3, 4, 5]
    assert traces["rs_box"][-1][1] != traces["rs_box"][0][1]
    assert all(lam > 0 for _, _, lam in traces["rs"])


def test_positive_feature_stats_count_active_and_dead_units(shapes_root, monkeypatch):
    """The box head's last FC set by hand: units with bias > 0 and zero weights are active on
    every positive, units with bias < 0 never; norm = sqrt(sum of the active biases²)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_root)
    tool = load_tool("measure_box_regression")
    from rsloss_d2 import engine as train_net
    from detectron2.data import build_detection_train_loader
    from detectron2.utils.env import seed_all_rng

    args = train_net.argument_parser().parse_args(
        ["--config-file", "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",
         "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"])
    cfg = train_net.build_cfg(args)
    model = train_net.Trainer.build_model(cfg)
    last_fc = model.roi_heads.box_head.fcs[-1]
    dim = last_fc.out_features
    torch.nn.init.zeros_(last_fc.weight)
    bias = torch.full((dim,), -1.0)
    bias[: dim // 4] = 2.0  # a quarter of the units alive
    last_fc.bias.data.copy_(bias)
    seed_all_rng(0)
    batches = [next(iter(build_detection_train_loader(cfg)))]
    norm, active, dead = tool.positive_feature_stats(model, batches)
    assert active == 0.25 and dead == 0.75
    assert abs(norm - (dim // 4 * 4.0) ** 0.5) < 1e-4
