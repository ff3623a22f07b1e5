#!/usr/bin/env python
"""Train / evaluate rsloss_d2 models: Detectron2's `DefaultTrainer` with rsloss_d2's config keys,
datasets and evaluators.

    python tools/train_net.py --config-file configs/shapes/mask_rcnn_R_18_FPN_quick.yaml
    python tools/train_net.py --config-file X --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file X --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file X --resume      # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --dataset my_train a/train.json a/images \
        --dataset my_val a/val.json a/images --config-file X \
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.ROI_HEADS.NUM_CLASSES 4

`--dataset NAME JSON IMAGE_DIR` (repeatable) registers a COCO- or LVIS-format dataset (the format
is recognised from the json). Everything that can be checked before training is checked before
any process starts and ends with one `train_net.py: error: ...` line: unknown config keys,
missing files, malformed annotation files, NUM_CLASSES differing from the training set's number
of categories (rsloss_d2/data/config_checks.py). RLE masks switch INPUT.MASK_FORMAT to bitmask.

Without a GPU (MODEL.DEVICE cpu), `--num-gpus N` starts N CPU processes that train with
DistributedDataParallel over gloo.
"""
import logging
import os
import shlex
import sys
import weakref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import build_detection_train_loader  # noqa: E402
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
from rsloss_d2.data.config_checks import ConfigDataError, check_config_against_data  # noqa: E402
from rsloss_d2.data.transforms import build_train_mapper  # noqa: E402
from rsloss_d2.data.user_datasets import DatasetFormatError, register_from_args  # noqa: E402
from rsloss_d2.engine import TrainingAutocast, leave_process_group  # noqa: E402
from rsloss_d2.evaluation.build import build_evaluator, format_baseline_comparison  # noqa: E402

# errors found before any process starts: printed as one `train_net.py: error:` line
SETUP_ERRORS = (KeyError, DatasetFileError, DatasetFormatError, ConfigDataError)


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
        if cfg.SOLVER.AMP.ENABLED and not on_cpu:  # fp16 + gradient scaling (CUDA only)
            self._trainer = AMPTrainer(model, data_loader, optimizer)
        elif cfg.SOLVER.AMP.ENABLED:  # CPU: bf16 autocast of the forward, SimpleTrainer's loop
            self._trainer = SimpleTrainer(TrainingAutocast(model), data_loader, optimizer)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # Detectron2's DatasetMapper, or the SSD-style augmentation (photometric distortion,
        # expand, min-IoU crop) of the YOLACT / aLRP-500 configs (INPUT.SSD_AUGMENTATION.ENABLED)
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    def train(self):
        # model_final.pth is written by the checkpointer hook at the last step, before the final
        # evaluation (which runs in after_train): if the evaluation fails, say how to redo it
        try:
            super().train()
        except Exception:
            final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            if self.iter >= self.max_iter and os.path.isfile(final):
                logging.getLogger("detectron2").error(
                    f"Training finished and the model is saved in {final}, but the evaluation "
                    f"failed (traceback below). Re-run only the evaluation with:\n  "
                    f"{getattr(self, 'eval_only_command', '--eval-only MODEL.WEIGHTS ' + final)}")
            raise
        results = getattr(self, "_last_eval_results", None)
        if results and len(self.cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test unwraps one set
            results = {self.cfg.DATASETS.TEST[0]: results}
        if comm.is_main_process() and results:
            comparison = format_baseline_comparison(self.cfg, results)
            if comparison:
                logging.getLogger("detectron2").info(comparison)
        return results


def eval_only_command(args, weights):
    """The command line that evaluates `weights` with the same config, datasets and options."""
    cmd = ["python", "tools/train_net.py", "--config-file", args.config_file]
    for triple in getattr(args, "dataset", None) or []:
        cmd += ["--dataset", *triple]
    if args.num_gpus != 1:
        cmd += ["--num-gpus", str(args.num_gpus)]
    cmd += ["--eval-only", *args.opts, "MODEL.WEIGHTS", weights]
    return " ".join(shlex.quote(str(c)) for c in cmd)


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


def register_datasets(args):
    """Register the `--dataset` triples (checked up front by `check_before_launch`, whose
    summaries travel with `args` so that the json is not read again); {name: summary}."""
    return register_from_args(getattr(args, "dataset", None),
                              getattr(args, "dataset_summaries", None))


def check_before_launch(args):
    """Everything that can fail before training, in the launching process: registers and checks
    the `--dataset` files, builds the config, checks it against the data. Stores the results on
    `args` (the datasets' summaries; config changes such as the mask format as extra opts)."""
    summaries = register_datasets(args)
    cfg = build_cfg(args)
    extra_opts, messages = check_config_against_data(cfg, summaries, eval_only=args.eval_only)
    for message in messages:
        print(f"train_net.py: {message}", flush=True)
    warning = images_per_process_warning(cfg, args.num_gpus * args.num_machines)
    if warning:
        print(f"train_net.py: warning: {warning}", flush=True)
    args.dataset_summaries = summaries
    args.opts = list(args.opts) + extra_opts
    return cfg


def images_per_process_warning(cfg, world_size):
    """One line if the run's images per process (after Detectron2's auto-scaling by
    SOLVER.REFERENCE_WORLD_SIZE) differ from the config's SOLVER.REFERENCE_IMS_PER_PROCESS."""
    reference = cfg.SOLVER.REFERENCE_IMS_PER_PROCESS
    if not reference:
        return None
    scaled = DefaultTrainer.auto_scale_workers(cfg, world_size).SOLVER.IMS_PER_BATCH
    per_process = scaled / world_size
    if per_process == reference:
        return None
    return (f"{per_process:g} images per process (SOLVER.IMS_PER_BATCH {scaled} over {world_size} "
            f"processes), but this config was made for {reference}: ranking losses rank within "
            f"each process's images. Keep {reference} per process (SOLVER.REFERENCE_WORLD_SIZE "
            f"scales IMS_PER_BATCH, BASE_LR and the schedule for you), or scale BASE_LR linearly "
            f"with the total batch (README, 'Several GPUs').")


def setup(args):
    register_datasets(args)
    cfg = build_cfg(args)
    default_setup(cfg, args)
    # default_setup configures the "detectron2" and "fvcore" loggers only; rsloss_d2's modules
    # log under "rsloss_d2.*" (self-balance period, tail classes, ...): same console and log.txt
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rsloss_d2")
    return cfg


def main(args):
    results = train_or_evaluate(args)
    # Detectron2's `launch` leaves the process group alive; torn down at exit after rank 0 has
    # gone, it can abort a process whose work is done (rsloss_d2/engine/process_group.py)
    leave_process_group()
    return results


def train_or_evaluate(args):
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
    trainer.eval_only_command = eval_only_command(
        args, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """Detectron2's parser plus `--dataset NAME JSON IMAGE_DIR` (before the KEY VALUE opts)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO- or LVIS-format dataset under NAME (repeatable); use it with "
             "DATASETS.TRAIN / DATASETS.TEST")
    return parser


def invoke_main():
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:  # fail before starting any process, with the message alone
        check_before_launch(args)
    except SETUP_ERRORS as e:
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
