"""Every model family trains a few steps under CPU bf16 autocast (SOLVER.AMP.ENABLED on CPU:
`TrainingAutocast` inside Detectron2's SimpleTrainer) with finite losses and gradients: the
loader, model and optimizer of tools/train_net.py's Trainer, 3 iterations of 2 small images."""
import math
import os

import pytest
import torch
from detectron2.utils.events import EventStorage

from conftest import REPO

# one config per family (the RS / ranking-loss variant where a family has one)
FAMILY_CONFIGS = [
    "shapes/rs_mask_rcnn_R_18_FPN_quick.yaml",        # RS R-CNN
    "shapes/alrp_loss_retinanet_R_18_FPN_quick.yaml",  # aLRP RetinaNet (self-balance)
    "shapes/ap_loss_retinanet_R_18_FPN_quick.yaml",    # AP-Loss RetinaNet
    "shapes/rs_atss_R_18_FPN_quick.yaml",              # RS-ATSS
    "shapes/rs_paa_R_18_FPN_quick.yaml",               # RS-PAA
    "shapes/rs_solov2_R_18_FPN_quick.yaml",            # RS-SOLOv2
    "shapes/rs_yolact_R_18_quick.yaml",                # RS-YOLACT
    "shapes_lt/gol_mask_rcnn_R_18_FPN_rfs.yaml",       # GOL (Gumbel, DropLoss, normed heads)
]


@pytest.fixture(scope="module")
def datasets_root(shapes_root):
    """shapes (from the session fixture) and a small shapes_lt beside it."""
    from rsloss_d2.data import register_shapes_datasets
    from rsloss_d2.data.synthetic import generate_all

    generate_all(shapes_root, num_lt_train=40, num_lt_val=8, image_size=128, seed=0,
                 progress=False, which=("shapes_lt",))
    register_shapes_datasets(shapes_root)
    yield shapes_root
    register_shapes_datasets()


@pytest.mark.parametrize("config", FAMILY_CONFIGS)
def test_family_trains_under_cpu_bf16_autocast(config, datasets_root):
    import argparse
    from rsloss_d2 import engine as train_net
    from rsloss_d2.engine import TrainingAutocast

    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", config), eval_only=False, resume=False,
        num_gpus=1, opts=["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                          "INPUT.MAX_SIZE_TRAIN", "192", "DATALOADER.NUM_WORKERS", "0",
                          "SOLVER.AMP.ENABLED", "True", "SEED", "0"])
    cfg = train_net.build_cfg(args)
    torch.manual_seed(0)
    model = train_net.Trainer.build_model(cfg)
    optimizer = train_net.Trainer.build_optimizer(cfg, model)
    data = iter(train_net.Trainer.build_train_loader(cfg))
    wrapped = TrainingAutocast(model)
    wrapped.train()
    with EventStorage():
        for _ in range(3):
            losses = wrapped(next(data))
            for name, value in losses.items():
                assert math.isfinite(float(value)), (config, name, float(value))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            for name, p in model.named_parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), (config, name)
            optimizer.step()
