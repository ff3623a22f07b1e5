"""Helpers of the RS R-CNN tests: tiny configs, a fixed synthetic batch, a few training steps."""
import os

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rsloss_d2 import add_rsloss_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES_CONFIGS = os.path.join(REPO, "configs", "shapes")

# fixed per-class colours (BGR) so that a few steps can separate the classes
_COLOURS = [(40, 40, 220), (40, 200, 40), (220, 60, 60), (20, 200, 220),
            (200, 40, 200), (200, 200, 40), (120, 120, 120), (250, 250, 250)]

# tiny model: fewer proposals, small FC / mask heads, so that a step takes ~0.1-0.3 s on a CPU
TINY_OVERRIDES = [
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "60",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.BACKBONE.FREEZE_AT", "5",  # frozen ResNet: the heads (and FPN) are what is tested
]


def rs_cfg(config_file, opts=()):
    """A frozen-free cfg of `configs/shapes/<config_file>` with the tiny overrides and `opts`."""
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(SHAPES_CONFIGS, config_file))
    cfg.merge_from_list(TINY_OVERRIDES + list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def make_image(size, objects):
    """objects: list of (cls, x0, y0, x1, y1) → (3, size, size) uint8 BGR image, Instances."""
    img = np.full((size, size, 3), 90, dtype=np.uint8)
    masks = np.zeros((len(objects), size, size), dtype=bool)
    for k, (c, x0, y0, x1, y1) in enumerate(objects):
        img[y0:y1, x0:x1] = _COLOURS[c]
        masks[k, y0:y1, x0:x1] = True
    inst = Instances((size, size))
    boxes = torch.tensor([o[1:] for o in objects], dtype=torch.float32).reshape(-1, 4)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([o[0] for o in objects], dtype=torch.int64)
    inst.gt_masks = BitMasks(torch.from_numpy(masks))
    return {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "height": size,
            "width": size, "instances": inst}


def fixed_batch(size=64, empty_second=False):
    """Two images with 2-3 objects each (or an image without GT as the second)."""
    first = make_image(size, [(0, 6, 8, 30, 36), (1, 34, 30, 60, 58), (2, 36, 4, 56, 22)])
    if empty_second:
        second = make_image(size, [])
    else:
        second = make_image(size, [(2, 10, 30, 40, 60), (1, 44, 6, 62, 30)])
    return [first, second]


def train_steps(model, batch, steps, lr=0.01):
    """`steps` SGD steps on a fixed batch; returns the list of loss dicts (floats)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    history = []
    with EventStorage(0) as storage:
        for i in range(steps):
            storage.iter = i
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), {k: float(v) for k, v in losses.items()}
            opt.zero_grad()
            total.backward()
            for p in model.parameters():
                if p.grad is not None:
                    assert torch.isfinite(p.grad).all()
            opt.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
    return history
