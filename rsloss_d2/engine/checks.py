"""Checks of the command line and the config made in the launching process, before any process
starts (each failure is one `train_net.py: error:` line, see :func:`rsloss_d2.engine.run`).

- options after the KEY VALUE pairs (argparse reads them as config keys);
- the loss choice of each family against the names the family knows (:data:`LOSS_CHOICES`);
- SOLVER.IMS_PER_BATCH divisible by the number of processes;
- MODEL.WEIGHTS: `--eval-only` needs weights; a local file must exist (URLs such as
  `detectron2://` or `rsloss_d2://` are resolved when the weights are loaded: resolving may
  download or make the file);
- OUTPUT_DIR: a new run over a finished one (model_final.pth) needs `--resume` (continue /
  re-evaluate it) or `--overwrite` (delete its checkpoints and metrics.json, start anew);
  `--resume` without a checkpoint starts a new run with a warning (so that a job restarted with
  `--resume` after being stopped before its first checkpoint still starts); a last checkpoint
  that cannot be read names the newest intact one.
"""
import glob
import os
import re
import zipfile

from detectron2.engine import DefaultTrainer

from ..losses import compiled
from ..modeling.ranking_retinanet import LOSSES as RANKING_RETINANET_LOSSES
from ..modeling.roi_heads.activation_fast_rcnn import LOSSES as GOL_LOSSES
from ..modeling.solov2 import LOSSES as SOLOV2_LOSSES
from ..modeling.yolact import LOSSES as YOLACT_LOSSES
from .checkpoint import (
    intact_checkpoint,
    last_checkpoint_file,
    torch_load_ok,
    unreadable_checkpoint_message,
)

__all__ = [
    "LOSS_CHOICES",
    "ConfigError",
    "check_batch_size",
    "check_loss_names",
    "check_rank_loss_implementation",
    "check_option_order",
    "check_output_dir",
    "check_weights_file",
    "config_value_error",
]

# The loss-choice key of each family -> the loss names its model accepts.
LOSS_CHOICES = {
    "MODEL.RANKING_RETINANET.LOSS": tuple(RANKING_RETINANET_LOSSES),
    "MODEL.YOLACT.LOSS": tuple(YOLACT_LOSSES),
    "MODEL.SOLOV2.LOSS": tuple(SOLOV2_LOSSES),
    "MODEL.GOL.LOSS": tuple(GOL_LOSSES),
}


class ConfigError(ValueError):
    """The command line or the config cannot run."""


_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values "
                            r"\((.*) vs\. (.*)\) for config key: (\S+)$", re.S)


def config_value_error(error, config_file, opts):
    """The one-line message of yacs' type-mismatch ValueError: the key, the type it wants, the
    value given and where (`config_file` or the command line `opts`)."""
    m = _TYPE_MISMATCH.search(str(error))
    if not m:
        return f"{error} (in {config_file} or on the command line)"
    wanted, given, default, value, key = m.groups()
    where = "on the command line" if key in list(opts)[::2] else f"in {config_file}"
    article = "an" if given[0] in "aeiou" else "a"
    msg = (f"{key} {value} {where}: expects a {wanted} (the config has {default}), got "
           f"{article} {given}")
    if wanted == "float" and given == "int":
        msg += f"; write {value}.0"
    elif wanted in ("tuple", "list"):
        msg += " (give a list or tuple as one argument, e.g. \"(0.5, 1.0)\")"
    return msg


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_option_order(opts, option_strings):
    """ConfigError if an option (`--dataset`, `--resume`, ...) is among the KEY VALUE pairs:
    argparse gives everything after the first KEY to them."""
    for token in opts:
        if isinstance(token, str) and token.split("=")[0] in option_strings:
            raise ConfigError(
                f"{token} comes after the KEY VALUE config pairs, where it would be read as a "
                f"config key: put {token} (and every other --option) before the first KEY VALUE "
                f"pair, e.g. train_net.py --config-file X {token} ... SOLVER.BASE_LR 0.01")


def check_loss_names(cfg):
    """ConfigError naming the key if a family's loss choice is not one of its names."""
    for key, names in LOSS_CHOICES.items():
        value = _get(cfg, key)
        if value not in names:
            raise ConfigError(f"{key} is {value!r}, which is not a loss of this family; "
                              f"choose one of {', '.join(repr(n) for n in names)}")


def check_rank_loss_implementation(cfg):
    """ConfigError unless MODEL.RANK_LOSS.IMPLEMENTATION is a path name, and for "compiled"
    unless the C library builds here (a training would otherwise stop at its first loss)."""
    value = cfg.MODEL.RANK_LOSS.IMPLEMENTATION
    if value not in compiled.IMPLEMENTATIONS:
        raise ConfigError(f"MODEL.RANK_LOSS.IMPLEMENTATION is {value!r}; choose one of "
                          f"{', '.join(repr(n) for n in compiled.IMPLEMENTATIONS)}")
    if value == "compiled" and compiled.library() is None:
        raise ConfigError(f"MODEL.RANK_LOSS.IMPLEMENTATION 'compiled': the C library cannot be "
                          f"built ({compiled.get_error()}); use 'auto' or 'eager'")


def check_batch_size(cfg, world_size):
    """ConfigError unless SOLVER.IMS_PER_BATCH (after Detectron2's scaling by
    SOLVER.REFERENCE_WORLD_SIZE) splits evenly over the `world_size` processes."""
    total, reference = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference and total % reference:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by "
                          f"SOLVER.REFERENCE_WORLD_SIZE {reference}")
    scaled = DefaultTrainer.auto_scale_workers(cfg, world_size).SOLVER.IMS_PER_BATCH
    if scaled % world_size:
        scaled_note = f" (scaled from {total} by SOLVER.REFERENCE_WORLD_SIZE)" \
            if scaled != total else ""
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {scaled}{scaled_note} is not divisible by the {world_size} "
            f"processes (--num-gpus x --num-machines): each process takes the same number of "
            f"images; use a multiple of {world_size}")


def check_weights_file(cfg, eval_only, resume):
    """ConfigError if `--eval-only` has nothing to evaluate or MODEL.WEIGHTS is a local file that
    does not exist."""
    weights = cfg.MODEL.WEIGHTS
    if eval_only and not weights and not (resume and last_checkpoint_file(cfg.OUTPUT_DIR)):
        raise ConfigError("--eval-only needs weights: MODEL.WEIGHTS is empty (give "
                          "MODEL.WEIGHTS path/to/model_final.pth, or --resume to evaluate the "
                          "last checkpoint of OUTPUT_DIR)")
    if not weights:
        return
    local = weights[len("file://"):] if weights.startswith("file://") else weights
    if "://" in local:
        return  # a URL: resolving it may download or make the file
    if not os.path.isfile(local):
        raise ConfigError(f"MODEL.WEIGHTS {weights}: no such file")


def _readable(path):
    """A `torch.save` file that is intact (zip checksums), or loads (legacy format)."""
    return intact_checkpoint(path) or (not zipfile.is_zipfile(path) and torch_load_ok(path))


def check_output_dir(cfg, resume, overwrite, eval_only):
    """Checks OUTPUT_DIR for a training run (module docstring). Returns warning lines; with
    `overwrite`, deletes the earlier run's checkpoints, last_checkpoint and metrics.json."""
    if eval_only:
        return []
    out = cfg.OUTPUT_DIR
    final = os.path.join(out, "model_final.pth")
    last = last_checkpoint_file(out)
    if overwrite:
        removed = [p for p in glob.glob(os.path.join(out, "model_*.pth"))
                   + [os.path.join(out, "last_checkpoint"), os.path.join(out, "metrics.json")]
                   if os.path.isfile(p)]
        for p in removed:
            os.remove(p)
        return [f"--overwrite: removed {len(removed)} files of an earlier run from {out} "
                f"(checkpoints, last_checkpoint, metrics.json)"] if removed else []
    if resume:
        if last is None:
            return [f"--resume: no checkpoint in OUTPUT_DIR {out} (no last_checkpoint file): "
                    f"starting a new run" + (f" from MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}"
                                             if cfg.MODEL.WEIGHTS else " from scratch")]
        if not os.path.isfile(last):
            raise ConfigError(unreadable_checkpoint_message(
                last, FileNotFoundError(f"{os.path.join(out, 'last_checkpoint')} names it, but "
                                        f"it does not exist")))
        if not _readable(last):
            raise ConfigError(unreadable_checkpoint_message(last))
        return []
    if os.path.isfile(final):
        raise ConfigError(
            f"OUTPUT_DIR {out} holds a finished run (model_final.pth): add --resume to continue "
            f"it (after its last iteration: evaluation only), --overwrite to delete its "
            f"checkpoints and metrics.json and train anew, or choose another OUTPUT_DIR")
    if last is not None:
        return [f"OUTPUT_DIR {out} holds checkpoints of an unfinished run (last: "
                f"{os.path.basename(last)}): starting a new run over it; --resume continues it"]
    return []
