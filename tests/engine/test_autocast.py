"""CPU mixed precision: TrainingAutocast runs the training forward in bf16 (the losses stay
finite and fp32), inference in fp32; tools/train_net.py trains with SOLVER.AMP.ENABLED on CPU."""
import os
import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from rsloss_d2 import add_rsloss_config
from rsloss_d2.engine import TrainingAutocast

from conftest import REPO, read_metrics, run_train_net


def _tiny_batch(n=2, size=64):
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = []
    for i in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 44.0], [30.0, 10.0, 60.0, 30.0]]))
        inst.gt_classes = torch.tensor([1, 3])
        m = torch.zeros(2, size, size, dtype=torch.bool)
        m[0, 8:44, 8:40] = True
        m[1, 10:30, 30:60] = True
        inst.gt_masks = BitMasks(m)
        batch.append({"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8).float(),
                      "instances": inst, "height": size, "width": size})
    return batch


def test_training_forward_is_bf16_and_inference_fp32():
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes", "rs_mask_rcnn_R_18_FPN_quick.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg)
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(o["p2"].dtype))
    wrapped = TrainingAutocast(model)
    wrapped.train()
    with EventStorage():
        losses = wrapped(_tiny_batch())
    assert seen[-1] == torch.bfloat16
    for name, v in losses.items():
        assert torch.isfinite(v).all(), name
    # the RS losses are computed in fp32 inside autocast
    assert losses["loss_roi_rank"].dtype == torch.float32
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    wrapped.eval()
    with torch.no_grad():
        wrapped([{k: v for k, v in d.items() if k != "instances"} for d in _tiny_batch(1)])
    assert seen[-1] == torch.float32
    # the checkpoint keys are those of the model itself
    assert set(wrapped.module.state_dict()) == set(model.state_dict())


def test_train_net_with_amp_on_cpu(shapes_root, tmp_path):
    out = str(tmp_path)
    proc = run_train_net(["--config-file", os.path.join(REPO, "configs", "shapes",
                                                        "rs_mask_rcnn_R_18_FPN_quick.yaml"),
                          "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "3",
                          "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                          "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
                          "SOLVER.AMP.ENABLED", "True"],
                         shapes_root)
    rows = [r for r in read_metrics(out) if "total_loss" in r]
    assert rows and all(torch.isfinite(torch.tensor(r["total_loss"])) for r in rows)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    # the final evaluation ran (in fp32) on shapes_val, and the main job's config printed its
    # comparison with the baseline's numbers (TEST.BASELINE_*) beside this run's
    assert "Comparison with the baseline on shapes_val" in proc.stdout
    with open(os.path.join(REPO, "configs", "shapes", "rs_mask_rcnn_R_18_FPN_quick.yaml")) as f:
        baseline = re.search(r"segm/AP=([\d.]+)", f.read()).group(1)
    assert re.search(r"segm/AP\s+[\d.]+\s+" + re.escape(baseline), proc.stdout), \
        proc.stdout[-2000:]
