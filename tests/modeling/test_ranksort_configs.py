"""Every yaml of configs/ranksort_loss/ loads with add_rsloss_config and builds its model on CPU."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rsloss_d2 import add_rsloss_config
from rsloss_d2.layers import CARAFE, ModulatedDeformConv2d

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "configs", "ranksort_loss")
ALL_LEAVES = sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
# the RS R-CNN family (the other families' yamls here are built by their own tests:
# tests/modeling/test_dense_configs.py, tests/modeling/yolact/, tests/modeling/solov2/)
LEAVES = [n for n in ALL_LEAVES if "rcnn" in n]


def load(name):
    cfg = get_cfg()
    add_rsloss_config(cfg)  # unknown keys in the yaml would raise here
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_every_paper_row_has_a_config():
    assert len(LEAVES) == 12, LEAVES
    readme = open(os.path.join(CONFIG_DIR, "README.md")).read()
    for name in ALL_LEAVES:
        assert name in readme, name


@pytest.mark.parametrize("name", LEAVES)
def test_config_builds(name):
    cfg = load(name)
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.012
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RSRPN"
    torch.manual_seed(0)
    model = build_model(cfg)
    mods = list(model.modules())
    assert any(isinstance(m, CARAFE) for m in mods) == ("carafe" in name)
    assert any(isinstance(m, ModulatedDeformConv2d) for m in mods) == ("DCN" in name)
    assert (model.roi_heads.mask_on if hasattr(model.roi_heads, "mask_on") else False) == (
        "mask" in name)
    if "X_101_64x4d" in name:
        assert model.backbone.bottom_up.res5[0].conv2.groups == 64
    if "lvis" in name:
        assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203


def test_carafe_mask_config_runs_inference():
    """The pieces connect: one eval forward of RS-Mask R-CNN+ R50 on a tiny image."""
    cfg = load("rs_mask_rcnn_R_50_FPN_carafe_1x.yaml")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # untrained scores are ~0.5 or lower
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8).float()
    with torch.no_grad():
        out = model([{"image": image, "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert len(inst) <= 5
    assert inst.has("pred_masks") and inst.pred_masks.shape[-2:] == (96, 128)
