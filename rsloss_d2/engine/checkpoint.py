"""Loading weights that fit, and checkpoints that can be read.

Detectron2 / fvcore load whatever names match and only log a warning for the rest, so weights of
another architecture, or of another number of classes, leave modules at their random
initialisation without stopping anything (an `--eval-only` run then prints a full table of a
random head). :class:`CheckedCheckpointer` keeps fvcore's incompatible-keys result of each load;
:func:`check_loaded_weights` turns it into an error unless the unloaded modules are expected:

- `MODEL.WEIGHTS_ALLOW_UNLOADED` lists modules (state-dict prefixes) that may stay unloaded or
  have another shape (fine-tuning to other classes: the class-specific predictors); "*" allows
  anything;
- a **pretrained start** (training only): weights that fill nothing but the backbone's bottom-up
  network (`backbone.bottom_up.*`; `backbone.*` for models without a bottom-up / neck split), as
  ImageNet files (`detectron2://ImageNetPretrained/...`) or `rsloss_d2://ShapesPretrained/...`
  do, leave the neck and heads to their initialisation on purpose. The bottom-up network itself
  must still load completely and with the same shapes. `--eval-only` gets no such allowance: a
  model evaluated with unloaded heads measures random weights.

A checkpoint of OUTPUT_DIR that cannot be read (a run killed while saving) is reported with the
newest intact `model_*.pth` beside it (:func:`unreadable_checkpoint_message`).
"""
import glob
import os
import re
import zipfile
from collections import Counter

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _filter_reused_missing_keys

__all__ = [
    "CheckedCheckpointer",
    "CheckpointError",
    "WeightsMismatchError",
    "check_loaded_weights",
    "intact_checkpoint",
    "last_checkpoint_file",
    "newest_intact_checkpoint",
    "unloaded_modules",
    "unreadable_checkpoint_message",
]

ALLOW_KEY = "MODEL.WEIGHTS_ALLOW_UNLOADED"
_CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth$")


class WeightsMismatchError(RuntimeError):
    """MODEL.WEIGHTS leaves model modules unloaded (missing, or of another shape)."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read."""


class CheckedCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer that keeps the result of the last load (`incompatible`: fvcore's
    missing keys / unexpected keys / incorrect shapes, after Detectron2's name matching; None
    until something is loaded) and names the newest intact checkpoint when a file of its
    directory cannot be read. `loaded_path`: the file of the last load."""

    incompatible = None
    loaded_path = None

    def load(self, path, *args, **kwargs):
        self.incompatible, self.loaded_path = None, path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def _torch_load(self, f):
        try:
            return super()._torch_load(f)
        except Exception as e:  # torch / pickle raise several types for a damaged file
            if intact_checkpoint(f):  # not a damaged file: the error is about something else
                raise
            raise CheckpointError(unreadable_checkpoint_message(f, e)) from e


def intact_checkpoint(path):
    """True if `path` is a readable `torch.save` file: a zip archive whose members all match their
    checksums (reads the file once, loads nothing)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def newest_intact_checkpoint(directory, exclude=()):
    """The newest intact `model_*.pth` of `directory` (model_final.pth counts as newest), or None.
    """
    def order(path):
        m = _CHECKPOINT_NAME.search(path).group(1)
        return float("inf") if m == "final" else int(m)

    candidates = [p for p in glob.glob(os.path.join(directory, "model_*.pth"))
                  if _CHECKPOINT_NAME.search(p) and os.path.abspath(p) not in
                  {os.path.abspath(e) for e in exclude}]
    for path in sorted(candidates, key=order, reverse=True):
        if intact_checkpoint(path):
            return path
    return None


def unreadable_checkpoint_message(path, error=None):
    """'checkpoint X cannot be read ...' with the newest intact checkpoint beside it and how to
    resume from it."""
    directory = os.path.dirname(os.path.abspath(path))
    reason = f" ({type(error).__name__}: {error})" if error is not None else ""
    msg = (f"checkpoint {path} cannot be read{reason}: it is truncated or corrupt, e.g. written "
           f"by a run that was killed while saving.")
    previous = newest_intact_checkpoint(directory, exclude=[path])
    if previous is None:
        return msg + f" There is no intact model_*.pth in {directory}."
    return (msg + f" The newest intact checkpoint is {previous}: to resume from it, write its "
            f"name into {os.path.join(directory, 'last_checkpoint')} "
            f"(echo {os.path.basename(previous)} > "
            f"{os.path.join(directory, 'last_checkpoint')}) and run with --resume again.")


def unloaded_modules(keys, all_keys):
    """The smallest set of module names covering `keys`: a module is named instead of its
    parameters when all of its state (among `all_keys`) is in `keys`, e.g.
    ["head", "roi_heads.box_predictor.cls_score"]. Sorted."""
    keys = set(keys)
    total, unloaded = Counter(), Counter()
    for k in all_keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            total[prefix] += 1
            if k in keys:
                unloaded[prefix] += 1
    out = set()
    for k in keys:
        parts = k.split(".")
        name = k
        for i in range(1, len(parts)):  # the outermost module that is entirely unloaded
            prefix = ".".join(parts[:i])
            if total[prefix] and unloaded[prefix] == total[prefix]:
                name = prefix
                break
        out.add(name)
    return sorted(out)


def _under(key, prefix):
    return key == prefix or key.startswith(prefix + ".")


def _short_list(names, limit=12):
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_loaded_weights(model, incompatible, path, allowed=(), eval_only=False, logger=None):
    """Raise :class:`WeightsMismatchError` if loading `path` left state of `model` unloaded that
    is not expected (module docstring). `incompatible`: fvcore's result of the load (None:
    nothing was loaded, nothing to check). `allowed`: `MODEL.WEIGHTS_ALLOW_UNLOADED`.

    Returns the sorted names of the modules left to their initialisation on purpose."""
    if incompatible is None:
        return []
    all_keys = list(model.state_dict().keys())
    missing = [k for k in _filter_reused_missing_keys(model, list(incompatible.missing_keys))
               if not k.endswith("num_batches_tracked")]  # a BatchNorm counter, not a weight
    shapes = {k: (tuple(ckpt), tuple(mine)) for k, ckpt, mine in incompatible.incorrect_shapes}
    missing = set(missing) | set(shapes)
    if not missing or "*" in allowed:
        return unloaded_modules(missing, all_keys)
    expected = {k for k in missing if any(_under(k, p) for p in allowed)}
    if not eval_only:
        bottom_up = "backbone.bottom_up"
        part = bottom_up if any(_under(k, bottom_up) for k in all_keys) else "backbone"
        loaded = [k for k in all_keys if k not in missing]
        if loaded and all(_under(k, part) for k in loaded):  # a pretrained start
            fresh = {k for k in missing if not _under(k, part)}
            if fresh and logger is not None:
                logger.info(f"{path} holds the backbone only ({part}): initialising "
                            f"{_short_list(unloaded_modules(fresh, all_keys))}")
            expected |= fresh
    wrong = missing - expected
    if not wrong:
        return unloaded_modules(missing, all_keys)
    modules = unloaded_modules(wrong, all_keys)
    parts = []
    absent = sorted(k for k in wrong if k not in shapes)
    if absent:
        parts.append(f"missing from the file: {_short_list(unloaded_modules(absent, all_keys))}")
    reshaped = sorted(k for k in wrong if k in shapes)
    if reshaped:
        parts.append("of another shape: " + _short_list(
            [f"{k} {list(shapes[k][0])} in the file vs {list(shapes[k][1])}" for k in reshaped],
            limit=6))
    suggestion = "[" + ", ".join(f"'{m}'" for m in modules) + "]"
    raise WeightsMismatchError(
        f"The weights {path} do not fit the model: {len(wrong)} of its {len(all_keys)} "
        f"parameters / buffers would keep their random initialisation ({'; '.join(parts)}). "
        f"Are these the weights of this config (architecture, NUM_CLASSES)? "
        + ("If evaluating these modules at their random initialisation is really intended"
           if eval_only else "If training them from a fresh initialisation is intended (e.g. "
           "fine-tuning to other classes)")
        + f", add {ALLOW_KEY} \"{suggestion}\".")


def last_checkpoint_file(output_dir):
    """The checkpoint that `--resume` would load (OUTPUT_DIR/last_checkpoint's file), or None if
    there is no last_checkpoint."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        return os.path.join(output_dir, f.read().strip())


def torch_load_ok(path):
    """Whether a non-zip (legacy `torch.save`) file loads."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False
