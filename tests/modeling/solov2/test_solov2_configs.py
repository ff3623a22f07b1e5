"""Every SOLO / SOLOv2 / RS-SOLOv2 yaml loads with add_rsloss_config and builds its model."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rsloss_d2 import add_rsloss_config
from rsloss_d2.modeling.solov2 import SOLOv2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for pattern in ("configs/solov2/*.yaml", "configs/ranksort_loss/solov2/*.yaml",
                    "configs/shapes/*solo*.yaml")
    for p in glob.glob(os.path.join(REPO, pattern))
    if not os.path.basename(p).startswith("Base-")
)


def load(path):
    cfg = get_cfg()
    add_rsloss_config(cfg)  # unknown keys in the yaml would raise here
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_all_family_configs_found_and_documented():
    names = [os.path.basename(p) for p in CONFIGS]
    assert len(CONFIGS) == 13, CONFIGS
    readme = open(os.path.join(REPO, "configs", "solov2", "README.md")).read()
    for name in names:
        if not name.endswith("_quick.yaml"):
            assert name in readme, name


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds(path):
    cfg = load(path)
    name = os.path.basename(path)
    s = cfg.MODEL.SOLOV2
    rs = name.startswith("rs_")
    assert cfg.MODEL.META_ARCHITECTURE == "SOLOv2" and cfg.MODEL.MASK_ON
    assert s.LOSS == ("rank_sort" if rs else "focal_dice")
    assert s.CELL_ASSIGNMENT == ("first" if rs else ("last" if "solo_" in name and
                                                      "solov2" not in name else "all"))
    assert s.SCORE_THR == (0.2 if rs else 0.1)
    assert list(s.NUM_GRIDS) == [40, 36, 24, 16, 12] and s.SIGMA == 0.2
    if "light" in name:
        assert s.FPN_SCALE_RANGES[0] == [1, 56] and s.NUM_KERNELS == s.NUM_MASKS == 128
        assert cfg.INPUT.MIN_SIZE_TEST == 448
    if name == "rs_solov2_light_R_34_FPN_448_3x.yaml":
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.MODEL.RESNETS.DEPTH) == (
            32, 0.012, 34)
    if name == "rs_solov2_R_101_FPN_3x.yaml":
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.MODEL.RESNETS.DEPTH) == (
            16, 0.006, 101)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, SOLOv2)
    head = model.ins_head
    expected_type = ("decoupled" if "decoupled" in name else
                     "vanilla" if "solo_" in name and "solov2" not in name else "dynamic")
    assert head.head_type == expected_type
    assert (model.mask_branch is not None) == (expected_type == "dynamic")
    assert head.cate_pred.out_channels == s.NUM_CLASSES
    if expected_type == "dynamic":
        assert head.kernel_pred.out_channels == s.NUM_KERNELS
        assert model.mask_branch.conv_pred.out_channels == s.NUM_MASKS
    elif expected_type == "vanilla":
        assert [c.out_channels for c in head.ins_preds] == [g * g for g in s.NUM_GRIDS]
    assert len(head.cate_tower) == s.NUM_INSTANCE_CONVS


@pytest.mark.parametrize("path", CONFIGS)
def test_official_warmup_and_norm_weight_decay(path):
    """SOLO / Decoupled SOLO warm up from lr/3, SOLOv2 / RS-SOLOv2 from lr/100 (official
    ``warmup_ratio``); mmdet v1 decays every parameter, norm layers included, so the optimiser
    Detectron2 builds from the config gives the norm layers the same weight decay."""
    from detectron2.solver import build_optimizer

    cfg = load(path)
    name = os.path.basename(path)
    vanilla_or_decoupled = "solo_" in name and "solov2" not in name
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(1 / 3 if vanilla_or_decoupled else 0.01)
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == cfg.SOLVER.WEIGHT_DECAY == 1e-4
    if "_quick" not in name:
        return  # building the optimiser of one small model per head type is enough
    model = build_model(cfg)
    norm_params = {id(p) for m in model.modules()
                   if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm))
                   for p in m.parameters(recurse=False)}
    assert norm_params
    opt = build_optimizer(cfg, model)
    decays = {g["weight_decay"] for g in opt.param_groups
              if any(id(p) in norm_params for p in g["params"])}
    assert decays == {1e-4}
