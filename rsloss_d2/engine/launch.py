"""Command line, config building and the checks made before any process starts: what
`tools/train_net.py` (and the diagnostics that build a model from a config) run.

Everything that can be checked before training is checked in the launching process and ends with
one `train_net.py: error: ...` line: unknown config keys, missing files, malformed annotation
files, NUM_CLASSES differing from the training set's number of categories
(`rsloss_d2/data/config_checks.py`), values of the wrong type, options after the KEY VALUE
pairs, loss names, the batch split, MODEL.WEIGHTS and OUTPUT_DIR (`rsloss_d2/engine/checks.py`).
RLE masks switch INPUT.MASK_FORMAT to bitmask. Weights that do not fit the model stop each
process after loading (`rsloss_d2/engine/checkpoint.py`).
"""
import json
import logging
import os
import shlex
import sys

import torch
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..config import add_rsloss_config
from ..data import DatasetFileError, check_dataset_files
from ..data.config_checks import ConfigDataError, check_config_against_data
from ..data.user_datasets import DatasetFormatError, register_from_args
from ..losses.compiled import set_implementation
from .checkpoint import (
    CheckedCheckpointer,
    CheckpointError,
    WeightsMismatchError,
    check_loaded_weights,
)
from .checks import (
    ConfigError,
    check_batch_size,
    check_loss_names,
    check_option_order,
    check_rank_loss_implementation,
    check_output_dir,
    check_weights_file,
    config_value_error,
)
from .process_group import leave_process_group
from .trainer import Trainer

__all__ = [
    "SETUP_ERRORS", "argument_parser", "build_cfg", "check_before_launch", "eval_only_command",
    "images_per_process_warning", "load_config", "main", "register_datasets", "run", "setup",
]

# errors found before any process starts: printed as one `train_net.py: error:` line
SETUP_ERRORS = (KeyError, DatasetFileError, DatasetFormatError, ConfigDataError, ConfigError)
# errors of a process's own checks (weights that do not fit, an unreadable checkpoint): one
# `train_net.py: error:` line too when the run is a single process
PROCESS_ERRORS = (WeightsMismatchError, CheckpointError)


def argument_parser():
    """Detectron2's parser plus `--dataset NAME JSON IMAGE_DIR` (before the KEY VALUE opts)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO- or LVIS-format dataset under NAME (repeatable); use it with "
             "DATASETS.TRAIN / DATASETS.TEST")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="train anew in an OUTPUT_DIR that holds a finished run: deletes its checkpoints, "
             "last_checkpoint and metrics.json first")
    return parser


def eval_only_command(args, weights):
    """The command line that evaluates `weights` with the same config, datasets and options."""
    cmd = ["python", "tools/train_net.py", "--config-file", args.config_file]
    for triple in getattr(args, "dataset", None) or []:
        cmd += ["--dataset", *triple]
    if args.num_gpus != 1:
        cmd += ["--num-gpus", str(args.num_gpus)]
    cmd += ["--eval-only", *args.opts, "MODEL.WEIGHTS", weights]
    return " ".join(shlex.quote(str(c)) for c in cmd)


def load_config(config_file, opts=()):
    """Detectron2's config with rsloss_d2's keys, merged with `config_file` and the KEY VALUE
    list `opts`, not frozen; raises KeyError naming an unknown key. MODEL.DEVICE falls back to
    cpu without CUDA."""
    cfg = get_cfg()
    add_rsloss_config(cfg)  # before merging, so rsloss_d2 keys are known and typos are errors
    if "://" not in config_file and not os.path.isfile(config_file):
        raise ConfigError(f"--config-file {config_file!r}: no such file")
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except ValueError as e:  # yacs: a value of another type than the key's default
        raise ConfigError(config_value_error(e, config_file, opts)) from e
    except (KeyError, AssertionError) as e:  # yacs: KeyError from files, AssertionError from opts
        msg = str(e.args[0]) if e.args else str(e)
        if "odd length" in msg:
            raise ConfigError(f"the KEY VALUE pairs after the options have an odd number of "
                              f"items ({len(opts)}): a KEY without its VALUE?") from e
        if "Non-existent" not in msg:
            raise
        raise KeyError(f"{msg} (unknown config key; rsloss_d2's keys are declared in "
                       f"rsloss_d2/config.py, Detectron2's in detectron2/config/defaults.py)") from e
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logging.getLogger("rsloss_d2").warning("CUDA is not available: using MODEL.DEVICE=cpu")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_cfg(args):
    """The merged, frozen config of the command line `args`; raises KeyError for an unknown key
    and DatasetFileError for a missing dataset file."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    check_dataset_files(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def register_datasets(args):
    """Register the `--dataset` triples (checked up front by `check_before_launch`, whose
    summaries travel with `args` so that the json is not read again); {name: summary}."""
    return register_from_args(getattr(args, "dataset", None),
                              getattr(args, "dataset_summaries", None))


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


def check_before_launch(args):
    """Everything that can fail before training, in the launching process: registers and checks
    the `--dataset` files, builds the config, checks it against the data. Stores the results on
    `args` (the datasets' summaries; config changes such as the mask format as extra opts)."""
    parser = argument_parser()
    check_option_order(args.opts, {s for a in parser._actions for s in a.option_strings})
    summaries = register_datasets(args)
    cfg = build_cfg(args)
    world_size = args.num_gpus * args.num_machines
    check_loss_names(cfg)
    check_rank_loss_implementation(cfg)
    check_weights_file(cfg, args.eval_only, args.resume)
    if not args.eval_only:
        check_batch_size(cfg, world_size)
    extra_opts, messages = check_config_against_data(cfg, summaries, eval_only=args.eval_only)
    for message in messages:
        print(f"train_net.py: {message}", flush=True)
    warning = images_per_process_warning(cfg, world_size)
    if warning:
        print(f"train_net.py: warning: {warning}", flush=True)
    # last: with --overwrite it deletes the earlier run's files, once everything else passed
    for message in check_output_dir(cfg, args.resume, getattr(args, "overwrite", False),
                                    args.eval_only):
        print(f"train_net.py: warning: {message}", flush=True)
    args.dataset_summaries = summaries
    args.opts = list(args.opts) + extra_opts
    return cfg


def setup(args):
    """Registers the datasets, builds the config, and sets up the output directory and logging
    of this process (Detectron2's `default_setup`)."""
    register_datasets(args)
    cfg = build_cfg(args)
    default_setup(cfg, args)
    set_implementation(cfg.MODEL.RANK_LOSS.IMPLEMENTATION)  # per process, like CUDNN_BENCHMARK
    # default_setup configures the "detectron2" and "fvcore" loggers only; rsloss_d2's modules
    # log under "rsloss_d2.*" (self-balance period, tail classes, ...): same console and log.txt
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rsloss_d2")
    return cfg


def save_eval_only_metrics(cfg, results):
    """Append the results of an `--eval-only` run to OUTPUT_DIR/metrics.json as one line with the
    keys of a training's final evaluation ("bbox/AP", ...) and "eval_only": MODEL.WEIGHTS, so
    that what reads a training's numbers (`tools/run_seeds.py`, plots) reads these too."""
    line = dict(flatten_results_dict(results), eval_only=cfg.MODEL.WEIGHTS)
    with PathManager.open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def train_or_evaluate(args):
    """One process's work: evaluate MODEL.WEIGHTS (`--eval-only`) or train (then evaluate)."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = CheckedCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        check_loaded_weights(model, checkpointer.incompatible, checkpointer.loaded_path,
                             cfg.MODEL.WEIGHTS_ALLOW_UNLOADED, eval_only=True)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            save_eval_only_metrics(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.eval_only_command = eval_only_command(
        args, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    """The function `launch` runs in every process."""
    results = train_or_evaluate(args)
    # Detectron2's `launch` leaves the process group alive; torn down at exit after rank 0 has
    # gone, it can abort a process whose work is done (see `leave_process_group`)
    leave_process_group()
    return results


def run(argv=None):
    """Parse the command line, check everything before any process starts (one
    `train_net.py: error:` line and exit code 1 on failure), then `launch` the processes."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        check_before_launch(args)
    except SETUP_ERRORS as e:
        sys.exit(f"train_net.py: error: {e.args[0] if e.args else e}")
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except PROCESS_ERRORS as e:  # one process: raised here (several: in the spawned process)
        sys.exit(f"train_net.py: error: {e}")
