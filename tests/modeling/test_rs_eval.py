"""End to end: a very short RS-Mask R-CNN training through tools/train_net.py on a small generated
`shapes` set, then `--eval-only` on its checkpoint gives box and mask AP."""
import json
import math
import os
import subprocess
import sys

import pytest

from _rs_helpers import REPO
from conftest import parse_copypaste

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "shapes", "rs_mask_rcnn_R_18_FPN_quick.yaml")
# tiny schedule and 128 px images: the point is the plumbing (checkpoint → eval-only → AP)
SHORT = ["SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(5,)",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
         "DATALOADER.NUM_WORKERS", "0", "SEED", "3",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.OLRP.ENABLED", "False"]


def _run(args, root):
    env = dict(os.environ, DETECTRON2_DATASETS=root, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, TRAIN_NET] + args, env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rs_datasets"))
    subprocess.run([sys.executable, "-m", "rsloss_d2.data.synthetic", "--root", root,
                    "--which", "shapes", "--num-train", "24", "--num-val", "6"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return root


def test_eval_only_gives_box_and_mask_ap(small_shapes, tmp_path):
    out = str(tmp_path / "run")
    log = _run(["--config-file", CONFIG, "OUTPUT_DIR", out, "DATASETS.TEST", "()"] + SHORT,
               small_shapes)
    assert "loss_roi_rank" in log and "loss_mask" in log
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    eval_out = str(tmp_path / "eval")
    log = _run(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR",
                eval_out] + SHORT, small_shapes)
    results = os.path.join(eval_out, "inference", "shapes_val", "coco_instances_results.json")
    with open(results) as f:
        dets = json.load(f)
    assert dets and all(0 <= d["score"] <= 1 for d in dets)
    assert all("segmentation" in d for d in dets)
    res = parse_copypaste(log)
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert math.isfinite(res[task][key]) and 0 <= res[task][key] <= 100, (task, res)
