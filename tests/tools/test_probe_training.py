"""tools/diagnostics/probe_training.py: per-iteration statistics (not 20-iteration medians) of the first
iterations of a config, with the backbone gradient norm, and the window summary."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_probe_records_every_iteration(shapes_root, tmp_path):
    out = tmp_path / "probe"
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_root)
    cmd = [sys.executable, os.path.join(REPO, "tools", "diagnostics", "probe_training.py"),
           "--configs", os.path.join(REPO, "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml"),
           "--iters", "3", "--window", "2", "--seed", "3", "--out", str(out),
           "--opts", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in
            (out / "rs_faster_rcnn_R_18_FPN_quick.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 1, 2]
    for r in rows:
        # the values of this very step: the balanced box loss equals L_rank + L_sort, and
        # λ = (L_rank + L_sort) / L_box, both only true of one iteration's values, not of medians
        cls = r["loss_roi_rank"] + r["loss_roi_sort"]
        assert abs(r["loss_roi_bbox"] - cls) < 1e-4 * max(1.0, cls)
        assert abs(r["fast_rcnn/lambda_bbox"] * r["fast_rcnn/loss_bbox_unbalanced"] - cls) < 1e-3 * cls
        assert r["grad_norm/backbone"] >= r["grad_norm/bottom_up"] > 0
        assert r["grad_norm/bbox_pred"] > 0 and r["grad_norm/cls_score"] > 0
        assert 0 <= r["fast_rcnn/num_gt_pos_rois"] <= r["fast_rcnn/num_pos"]
    assert len({r["fast_rcnn/lambda_bbox"] for r in rows}) == 3
    summary = (out / "summary.md").read_text()
    assert "| fast_rcnn/lambda_bbox |" in summary and "it 2–2" in summary
