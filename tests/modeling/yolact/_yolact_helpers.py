"""Helpers of the YOLACT tests: configs, a tiny model, hand-made batches."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

from rsloss_d2 import add_rsloss_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
YOLACT_CONFIGS = [
    "configs/yolact/yolact_R_50_550_1x8_55e.yaml",
    "configs/ranksort_loss/rs_yolact_R_50_550_55e.yaml",
    "configs/shapes/yolact_R_18_quick.yaml",
    "configs/shapes/rs_yolact_R_18_quick.yaml",
]
SHAPES = {"softmax_ohem": "configs/shapes/yolact_R_18_quick.yaml",
          "rank_sort": "configs/shapes/rs_yolact_R_18_quick.yaml"}
TINY = ["MODEL.YOLACT.INPUT_SIZE", "64", "MODEL.YOLACT.CONV_DIM", "32",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.YOLACT.NUM_CLASSES", "3",
        "MODEL.YOLACT.NUM_PROTOTYPES", "8"]


def load_cfg(path, opts=()):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_model(loss, seed=0, opts=()):
    cfg = load_cfg(SHAPES[loss], TINY + list(opts))
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def make_input(h=48, w=64, boxes=(), classes=(), seed=0):
    """One training dict: random image, rectangle masks filling the given boxes."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
    inst = Instances((h, w))
    bx = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(bx), h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(bx.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] = 40 * (1 + int(classes[i]))
    inst.gt_boxes = Boxes(bx)
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64).reshape(-1)
    inst.gt_masks = BitMasks(masks)
    return {"image": image, "instances": inst, "height": h, "width": w}
