"""Checks of a config against its datasets, run by `tools/train_net.py` before any process starts.

* ``NUM_CLASSES`` of the model's head(s) (the keys of :data:`NUM_CLASSES_KEYS` for the config's
  meta-architecture) must equal the number of categories of the training set (of the test sets
  with ``--eval-only``): otherwise Detectron2 trains without a word and the extra categories
  silently become background, or indexes out of range. ``DATASETS.CHECK_NUM_CLASSES False``
  lets a user who means it proceed.
* A training set whose masks are stored as RLE cannot be read with ``INPUT.MASK_FORMAT polygon``
  (Detectron2's default; the DataLoader worker would crash): ``bitmask`` is chosen instead and
  said in one line.
* With ``MODEL.MASK_ON`` every non-crowd training annotation needs a ``segmentation``.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from .user_datasets import DatasetSummary

__all__ = ["ConfigDataError", "NUM_CLASSES_KEYS", "num_classes_keys", "check_config_against_data"]

# meta-architecture -> the config keys that hold its number of classes
NUM_CLASSES_KEYS: Dict[str, Tuple[str, ...]] = {
    "GeneralizedRCNN": ("MODEL.ROI_HEADS.NUM_CLASSES",),  # incl. RS / cascade / GOL heads
    "RetinaNet": ("MODEL.RETINANET.NUM_CLASSES",),
    "RankingRetinaNet": ("MODEL.RETINANET.NUM_CLASSES",),  # aLRP / AP / RS-ATSS / RS-PAA
    "SOLOv2": ("MODEL.SOLOV2.NUM_CLASSES",),  # SOLO, Decoupled SOLO, SOLOv2, RS-SOLOv2
    "YOLACT": ("MODEL.YOLACT.NUM_CLASSES",),  # YOLACT, RS-YOLACT
}


class ConfigDataError(ValueError):
    """The config does not fit the dataset it trains or evaluates on."""


def num_classes_keys(cfg) -> Tuple[str, ...]:
    """The NUM_CLASSES keys of the config's meta-architecture (empty if unknown)."""
    return NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, ())


def _cfg_value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _categories(name: str, summaries: Dict[str, DatasetSummary]) -> Optional[List[str]]:
    if name in summaries:
        return summaries[name].category_names
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    return list(classes) if classes is not None else None


def check_config_against_data(cfg, summaries: Dict[str, DatasetSummary], eval_only: bool = False
                              ) -> Tuple[List[str], List[str]]:
    """Check `cfg` against its datasets.

    Args:
        cfg: the merged config (rsloss_d2 keys included).
        summaries: ``{name: DatasetSummary}`` of the datasets given with ``--dataset``; other
            datasets are checked through their metadata (``thing_classes``) where it is known.
        eval_only: check the test sets' categories instead of the training sets'.

    Returns:
        ``(extra_opts, messages)``: config ``KEY VALUE`` pairs to append (the mask format) and
        one line for each of them saying why. Raises :class:`ConfigDataError` naming the
        dataset, the key and the values.
    """
    names: Sequence[str] = cfg.DATASETS.TEST if eval_only else cfg.DATASETS.TRAIN
    role = "test set" if eval_only else "training set"
    if cfg.DATASETS.CHECK_NUM_CLASSES:
        for name in names:
            cats = _categories(name, summaries)
            if cats is None:
                continue
            for key in num_classes_keys(cfg):
                value = _cfg_value(cfg, key)
                if value != len(cats):
                    shown = ", ".join(cats[:8]) + (", ..." if len(cats) > 8 else "")
                    raise ConfigDataError(
                        f"{key} is {value} but the {role} '{name}' has {len(cats)} categories "
                        f"({shown}): set {key} {len(cats)} (or DATASETS.CHECK_NUM_CLASSES False "
                        f"if the difference is intended)")
    extra, messages = [], []
    train = [summaries[n] for n in cfg.DATASETS.TRAIN if n in summaries]
    if cfg.MODEL.MASK_ON and not eval_only:
        for s in train:
            if s.num_without_segmentation:
                raise ConfigDataError(
                    f"MODEL.MASK_ON is True but {s.num_without_segmentation} non-crowd "
                    f"annotations of the training set '{s.name}' ({s.json_file}) have no "
                    f"'segmentation'")
    rle = [s for s in train if s.num_rle_masks]
    if rle and cfg.INPUT.MASK_FORMAT == "polygon":
        extra += ["INPUT.MASK_FORMAT", "bitmask"]
        messages.append(
            f"training set '{rle[0].name}' stores {rle[0].num_rle_masks} masks as RLE, which "
            f"INPUT.MASK_FORMAT polygon cannot hold: training with INPUT.MASK_FORMAT bitmask")
    return extra, messages
