"""Every yaml of the ranking-loss dense detectors loads and builds (configs/alrp_loss/, RS-ATSS /
RS-PAA in configs/ranksort_loss/, the shapes variants), with the official settings of each row."""
import glob
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from rsloss_d2 import add_rsloss_config
from rsloss_d2.layers import ModulatedDeformConv2d
from rsloss_d2.modeling.ranking_retinanet import RankingRetinaNet

from _dense_helpers import REPO

COCO_TRAIN_IMAGES = 117266  # non-empty train2017 images (mmdet filter_empty_gt)


def _yamls():
    return sorted(
        glob.glob(os.path.join(REPO, "configs", "alrp_loss", "*.yaml"))
        + glob.glob(os.path.join(REPO, "configs", "ranksort_loss", "rs_atss_*.yaml"))
        + glob.glob(os.path.join(REPO, "configs", "ranksort_loss", "rs_paa_*.yaml"))
        + [os.path.join(REPO, "configs", "shapes", n) for n in (
            "Base-Shapes-Dense-R18-FPN.yaml", "retinanet_R_18_FPN_quick.yaml",
            "ap_loss_retinanet_R_18_FPN_quick.yaml", "alrp_loss_retinanet_R_18_FPN_quick.yaml",
            "rs_atss_R_18_FPN_quick.yaml", "rs_paa_R_18_FPN_quick.yaml")])


def _load(path):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(path)
    # structure only: parameters on the meta device (no memory, no weight init: 7x faster)
    cfg.MODEL.DEVICE = "meta"
    return cfg


@pytest.mark.parametrize("path", _yamls(), ids=os.path.basename)
def test_config_loads_and_builds(path):
    cfg = _load(path)
    name = os.path.basename(path)
    with torch.device("meta"):
        model = build_model(cfg)
    anchors = model.anchor_generator.num_cell_anchors[0]
    if name.startswith("retinanet"):
        assert type(model) is RetinaNet
        return
    assert isinstance(model, RankingRetinaNet)
    c = cfg.MODEL.RANKING_RETINANET
    p6_input = model.backbone.top_block.p6.in_channels
    if "atss" in name or "paa" in name or "ATSS" in name:
        assert model.assigner == ("paa" if "paa" in name else "atss")
        assert list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS) == [[1.0]]
    if "rs_" in name:  # RS-ATSS / RS-PAA: GN tower, level scales, P6 on P5, 3 anchors
        assert model.loss == "rank_sort" and anchors == 3
        assert model.head.scales is not None and cfg.MODEL.RETINANET.NORM == "GN"
        assert c.P6_IN_FEATURE == "p5" and p6_input == cfg.MODEL.FPN.OUT_CHANNELS
        assert cfg.MODEL.RETINANET.NMS_THRESH_TEST == 0.6
        assert model.score_voting == ("paa" in name)
    else:  # aLRP / AP RetinaNets: plain head (GN on shapes only), P6 from C5
        assert model.head.scales is None and c.P6_IN_FEATURE == "res5"
        assert p6_input != cfg.MODEL.FPN.OUT_CHANNELS or "Shapes" in name or "R_18" in name
        assert model.loss == ("ap" if name.startswith("ap_") else "alrp")
        if model.assigner == "max_iou":
            assert anchors == 6
        assert cfg.MODEL.RETINANET.NMS_THRESH_TEST == 0.5
    if "alrp_loss" in path and "shapes" not in path:
        assert cfg.MODEL.RETINANET.NORM == "" and c.SELF_BALANCE_PERIOD == 0
        per_epoch = math.ceil(COCO_TRAIN_IMAGES / cfg.SOLVER.IMS_PER_BATCH)
        assert cfg.SOLVER.MAX_ITER == 100 * per_epoch
        steps = (75, 95) if "ATSS-500" in name or ("atss" in name and "500" in name) else (60, 80)
        assert tuple(cfg.SOLVER.STEPS) == tuple(s * per_epoch for s in steps)
        scale_800 = "800" in name
        assert cfg.SOLVER.IMS_PER_BATCH == (16 if scale_800 else 32)
        assert cfg.INPUT.SSD_AUGMENTATION.ENABLED
        assert tuple(cfg.INPUT.SSD_AUGMENTATION.SIZE) == ((800, 800) if scale_800 else (512, 512))
        if model.assigner == "atss":
            assert anchors == (3 if scale_800 else 2)
        if name.startswith("ap_"):
            assert cfg.SOLVER.BASE_LR == 0.002
        else:
            assert cfg.SOLVER.BASE_LR == (0.004 if scale_800 else 0.008)
    if "X_101" in name:
        assert cfg.MODEL.RESNETS.NUM_GROUPS == 64 and cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 4
    has_dcn = any(isinstance(m, ModulatedDeformConv2d) for m in model.backbone.modules())
    assert has_dcn == ("DCN" in name)
