"""The SOLOv2 meta-architecture end to end on tiny inputs: bad input trains without NaN,
untrained / all-zero predictions give empty Instances in the evaluators' format."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from rsloss_d2 import add_rsloss_config

from _solo_helpers import make_instances, random_image_batch, rect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VARIANTS = {
    "solov2": [],
    "rs_solov2": ["MODEL.SOLOV2.LOSS", "rank_sort", "MODEL.SOLOV2.CELL_ASSIGNMENT", "first"],
    "solo": ["MODEL.SOLOV2.INSTANCE_HEAD_TYPE", "vanilla", "MODEL.SOLOV2.CELL_ASSIGNMENT", "last"],
    "decoupled": ["MODEL.SOLOV2.INSTANCE_HEAD_TYPE", "decoupled",
                  "MODEL.SOLOV2.CELL_ASSIGNMENT", "last"],
}


def tiny_model(variant):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes", "solov2_R_18_FPN_quick.yaml"))
    cfg.merge_from_list(VARIANTS[variant] + ["MODEL.SOLOV2.NUM_GRIDS", [8, 6, 4, 3, 2]])
    torch.manual_seed(0)
    return build_model(cfg)


def bad_batch():
    """Image without objects; image with a tiny object whose mask vanished, an object in no
    scale range (√(wh) > 512 via its box) and one normal object."""
    empty = {"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64,
             "instances": make_instances((64, 64), [], [], [])}
    tiny = torch.zeros(64, 64, dtype=torch.bool)
    inst = make_instances((64, 64), [[3, 3, 4, 4], [0, 0, 600, 600], [10, 10, 40, 30]],
                          [tiny, rect(64, 64, 0, 60, 0, 60), rect(64, 64, 10, 30, 10, 40)],
                          [1, 2, 3])
    mixed = {"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64, "instances": inst}
    return [empty], [empty, mixed]


def check_step(model, batch):
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    model.zero_grad()
    total.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    return losses, storage


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bad_input_trains_without_nan(variant):
    model = tiny_model(variant)
    only_empty, mixed = bad_batch()
    losses, storage = check_step(model, only_empty)
    assert float(losses["loss_ins"].detach()) == 0.0
    assert storage.history("solov2/num_pos").latest() == 0
    losses, storage = check_step(model, mixed)
    assert float(losses["loss_ins"].detach()) > 0  # the normal object trains its mask
    assert storage.history("solov2/num_pos").latest() > 0
    if variant == "rs_solov2":
        assert set(losses) == {"loss_rank", "loss_sort", "loss_ins"}
        assert storage.history("solov2/lambda_mask").latest() > 0
    else:
        assert set(losses) == {"loss_ins", "loss_cate"}


@pytest.mark.parametrize("variant", ["solov2", "solo", "decoupled"])
def test_inference_format(variant):
    model = tiny_model(variant)
    batch = random_image_batch(2, (64, 96), 2, seed=1)
    batch[1]["height"], batch[1]["width"] = 128, 192  # evaluated at the original size
    model.eval()
    # untrained masks are ~0.5 (SOLO: ~0.01) everywhere: lower the thresholds / raise the mask
    # biases so that something survives
    for name, p in model.ins_head.named_parameters():
        if name.startswith("ins_preds") and name.endswith("bias"):
            torch.nn.init.constant_(p, 2.0)
    model.test_cfg.score_thr, model.test_cfg.mask_thr, model.test_cfg.update_thr = 0.0, 0.3, 0.0
    with torch.no_grad():
        out = model(batch)
    for b, o in zip(batch, out):
        inst = o["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (b["height"], b["width"])
        assert len(inst) > 0 and len(inst) <= model.test_cfg.max_per_img
        assert inst.pred_masks.dtype == torch.bool
        assert inst.pred_masks.shape[1:] == (b["height"], b["width"])
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
    vis = Visualizer(np.zeros((64, 96, 3), dtype=np.uint8))
    img = vis.draw_instance_predictions(out[0]["instances"].to("cpu")).get_image()
    assert img.shape == (64, 96, 3)

    # all-zero category predictions: empty Instances, no crash
    torch.nn.init.constant_(model.ins_head.cate_pred.bias, -50.0)
    model.test_cfg.score_thr = 0.1
    with torch.no_grad():
        out = model(batch)
    assert all(len(o["instances"]) == 0 for o in out)
    assert out[1]["instances"].pred_masks.shape == (0, 128, 192)


@pytest.mark.parametrize("variant", ["solov2", "rs_solov2"])
def test_bf16_autocast_step_gives_fp32_losses(variant):
    model = tiny_model(variant)
    model.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(random_image_batch(2, (64, 64), 3))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()


def test_crowd_annotations_are_ignored(tmp_path):
    """Detectron2's mapper drops iscrowd annotations (the official code sends them to the unused
    gt_bboxes_ignore): only the normal object becomes a GT and trains cells."""
    from PIL import Image
    from detectron2.data import DatasetMapper
    from detectron2.structures import BoxMode

    path = str(tmp_path / "img.png")
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(path)

    def ann(x, y, crowd):
        poly = [x, y, x + 24, y, x + 24, y + 24, x, y + 24]
        return {"bbox": [x, y, 24, 24], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
                "segmentation": [poly], "iscrowd": crowd}
    record = {"file_name": path, "height": 64, "width": 64, "image_id": 0,
              "annotations": [ann(4, 4, 0), ann(34, 34, 1)]}
    model = tiny_model("solov2")
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes", "solov2_R_18_FPN_quick.yaml"))
    inp = DatasetMapper(cfg, is_train=True)(record)
    assert len(inp["instances"]) == 1
    losses, storage = check_step(model, [inp])
    assert storage.history("solov2/num_pos").latest() > 0
