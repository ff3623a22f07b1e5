#!/usr/bin/env python
"""Train / evaluate rsloss_d2 models: Detectron2's `DefaultTrainer` with rsloss_d2's config keys,
datasets and evaluators.

    python tools/train_net.py --config-file configs/shapes/mask_rcnn_R_18_FPN_quick.yaml
    python tools/train_net.py --config-file X --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file X --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file X --resume      # continue from OUTPUT_DIR/last_checkpoint

Without a GPU (MODEL.DEVICE cpu), `--num-gpus N` starts N CPU processes that train with
DistributedDataParallel over gloo.
"""
import logging
import os
import sys
import weakref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import (  # noqa: E402
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from rsloss_d2 import add_rsloss_config  # noqa: E402
from rsloss_d2.data import DatasetFileError, check_dataset_files  # noqa: E402
from rsloss_d2.evaluation.build import build_evaluator  # noqa: E402


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluator is chosen from the dataset's metadata (COCO or LVIS, with
    Optimal LRP beside AP when cfg.TEST.OLRP.ENABLED), and which can train with several CPU
    processes."""

    def __init__(self, cfg):
        # Same as DefaultTrainer.__init__, except for the DDP wrapper: Detectron2's
        # `create_ddp_model` always passes `device_ids=[local_rank]`, which DDP rejects for a CPU
        # model, so `--num-gpus N` without CUDA (gloo) would fail.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(model, broadcast_buffers=False,
                                 **({"device_ids": None} if on_cpu else {}))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def build_cfg(args):
    """The merged, frozen config; raises KeyError for an unknown key and DatasetFileError for a
    missing dataset file."""
    cfg = get_cfg()
    add_rsloss_config(cfg)  # before merging, so rsloss_d2 keys are known and typos are errors
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:  # yacs: KeyError from files, AssertionError from opts
        msg = str(e.args[0]) if e.args else str(e)
        if "Non-existent" not in msg:
            raise
        raise KeyError(f"{msg} (unknown config key; rsloss_d2's keys are declared in "
                       f"rsloss_d2/config.py, Detectron2's in detectron2/config/defaults.py)") from e
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logging.getLogger("rsloss_d2").warning("CUDA is not available: using MODEL.DEVICE=cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_dataset_files(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def setup(args):
    cfg = build_cfg(args)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:  # fail before starting any process, with the message alone
        build_cfg(args)
    except (KeyError, DatasetFileError) as e:
        sys.exit(f"train_net.py: error: {e.args[0] if e.args else e}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
