"""Helpers of the ranking-loss dense detector tests (aLRP / AP-Loss RetinaNet, RS-ATSS, RS-PAA):
tiny configs of `configs/shapes/*`; the fixed batch and the training loop of `_rs_helpers`."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rsloss_d2 import add_rsloss_config

from _rs_helpers import REPO, fixed_batch, make_image, train_steps  # noqa: F401

SHAPES_CONFIGS = os.path.join(REPO, "configs", "shapes")

DENSE_CONFIGS = {
    "aLRP": "alrp_loss_retinanet_R_18_FPN_quick.yaml",
    "AP": "ap_loss_retinanet_R_18_FPN_quick.yaml",
    "RS-ATSS": "rs_atss_R_18_FPN_quick.yaml",
    "RS-PAA": "rs_paa_R_18_FPN_quick.yaml",
}

# tiny model: 32 FPN / head channels, 3 classes, frozen ResNet (the heads are what is tested),
# an explicit self-balance period (no dataset needed)
TINY_OVERRIDES = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RETINANET.NUM_CLASSES", "3",
    "MODEL.BACKBONE.FREEZE_AT", "5",
    "MODEL.RANKING_RETINANET.SELF_BALANCE_PERIOD", "3",
]


def dense_cfg(name, opts=()):
    """cfg of `configs/shapes/<DENSE_CONFIGS[name] or name>` + tiny overrides + `opts`."""
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(SHAPES_CONFIGS, DENSE_CONFIGS.get(name, name)))
    cfg.merge_from_list(TINY_OVERRIDES + list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)
