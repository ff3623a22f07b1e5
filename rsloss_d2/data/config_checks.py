"""Checks of a config against its datasets, run by `tools/train_net.py` before any process starts.

* ``NUM_CLASSES`` of the model's head(s) (the keys of :data:`NUM_CLASSES_KEYS` for the config's
  meta-architecture) must equal the number of categories of the training set: otherwise
  Detectron2 trains without a word and the extra categories silently become background, or
  indexes out of range. ``DATASETS.CHECK_NUM_CLASSES False`` lets a user who means it train
  with *more* classes than categories; fewer is always an error (labels would not fit the head).
  With ``--eval-only`` the training set (the model's classes) is checked when it is given with
  ``--dataset``, else the test sets.
* The categories of every test set must be the training set's, matched by id and name (the
  model's class k is the training set's k-th category by id): a difference is an error listing
  it. ``DATASETS.TEST_CATEGORY_SUBSET True`` evaluates a test set that has a subset of them.
* Own training data (``--dataset``) with a test set that is not (e.g. the config's
  ``shapes_val``): an error when the categories differ, else a warning.
* A training set without annotations is an error (there would be nothing to learn; with
  ``DATALOADER.FILTER_EMPTY_ANNOTATIONS False`` every loss would be exactly 0).
* A training set whose masks are stored as RLE cannot be read with ``INPUT.MASK_FORMAT polygon``
  (Detectron2's default; the DataLoader worker would crash): ``bitmask`` is chosen instead and
  said in one line.
* With ``MODEL.MASK_ON`` every non-crowd training annotation needs a mask (a polygon of at least
  3 points or an RLE); box-only models keep such annotations as boxes.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .user_datasets import DatasetSummary

__all__ = ["ConfigDataError", "NUM_CLASSES_KEYS", "num_classes_keys", "check_config_against_data",
           "category_table"]

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


def category_table(name: str, summaries: Dict[str, DatasetSummary]
                   ) -> Optional[List[Tuple[Optional[int], str]]]:
    """``[(category id, name), ...]`` of a dataset in the order of its classes (the id None
    where the metadata gives none), or None if its categories are unknown."""
    if name in summaries:
        s = summaries[name]
        return list(zip(s.category_ids, s.category_names))
    if name not in DatasetCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    if classes is None:
        return None
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        ids = {v: k for k, v in mapping.items()}
        return [(ids.get(i), str(c)) for i, c in enumerate(classes)]
    if meta.get("evaluator_type", None) == "lvis":  # Detectron2: LVIS id k is class k - 1
        return [(i + 1, str(c)) for i, c in enumerate(classes)]
    return [(None, str(c)) for c in classes]


def _is_own(name, summaries):
    return name in summaries or bool(MetadataCatalog.get(name).get("user_dataset", False))


def _show(pairs, limit=6):
    text = ", ".join(f"{i} '{n}'" if i is not None else f"'{n}'" for i, n in pairs[:limit])
    return text + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def _category_differences(model, other):
    """``(extra, missing, renamed, renumbered)`` of `other`'s categories against `model`'s: by
    id where both give ids, else by name in class order. `renamed`: ``[(id, model name, other
    name)]`` (id: the class index without ids); `renumbered`: ``[(name, model id, other id)]``,
    taken out of `extra` / `missing`."""
    if all(i is not None for i, _ in model + other):
        mine, theirs = dict(model), dict(other)
        extra = [(i, n) for i, n in other if i not in mine]
        missing = [(i, n) for i, n in model if i not in theirs]
        renamed = [(i, mine[i], n) for i, n in other if i in mine and mine[i] != n]
        missing_by_name = {n: i for i, n in missing}
        renumbered = [(n, missing_by_name[n], i) for i, n in extra if n in missing_by_name]
        moved = {n for n, _, _ in renumbered}
        extra = [(i, n) for i, n in extra if n not in moved]
        missing = [(i, n) for i, n in missing if n not in moved]
        return extra, missing, renamed, renumbered
    mine, theirs = [n for _, n in model], [n for _, n in other]
    extra = [(None, n) for n in theirs if n not in mine]
    missing = [(None, n) for n in mine if n not in theirs]
    renamed = []
    if not extra and not missing and mine != theirs:  # same names in another order
        renamed = [(k, a, b) for k, (a, b) in enumerate(zip(mine, theirs)) if a != b]
    return extra, missing, renamed, []


def _check_num_classes(cfg, names, role, summaries):
    for name in names:
        cats = _categories(name, summaries)
        if cats is None:
            continue
        for key in num_classes_keys(cfg):
            value = _cfg_value(cfg, key)
            if value == len(cats):
                continue
            shown = ", ".join(cats[:8]) + (", ..." if len(cats) > 8 else "")
            if not cfg.DATASETS.CHECK_NUM_CLASSES and value > len(cats):
                continue  # more classes than categories: unused classes, as the user means
            if not cfg.DATASETS.CHECK_NUM_CLASSES:
                raise ConfigDataError(
                    f"{key} is {value} but the {role} '{name}' has {len(cats)} categories "
                    f"({shown}): its class labels 0..{len(cats) - 1} do not fit a head of "
                    f"{value} classes, even with DATASETS.CHECK_NUM_CLASSES False (which allows "
                    f"more classes than categories, never fewer): set {key} {len(cats)}")
            if role == "test set":
                raise ConfigDataError(
                    f"{key} is {value} but the test set '{name}' has {len(cats)} categories "
                    f"({shown}). {key} must stay the number of classes the weights were trained "
                    f"with (another value leaves the class predictors unloaded and random): "
                    f"evaluate on a test set with the training set's categories, and give the "
                    f"training set with --dataset and DATASETS.TRAIN so that they are compared")
            raise ConfigDataError(
                f"{key} is {value} but the {role} '{name}' has {len(cats)} categories "
                f"({shown}): set {key} {len(cats)} (or DATASETS.CHECK_NUM_CLASSES False "
                f"if more classes than categories are intended)")


def _check_test_categories(cfg, summaries, model_set, test_names):
    """Every test set's categories against the training set's (the model's classes); returns
    warnings. Sets the model's categories on a test set evaluated on a subset."""
    model = category_table(model_set, summaries)
    warnings = []
    if model is None:
        return warnings
    own_training = _is_own(model_set, summaries)
    for name in test_names:
        other = category_table(name, summaries)
        if other is None:
            continue
        foreign = own_training and not _is_own(name, summaries)
        extra, missing, renamed, renumbered = _category_differences(model, other)
        if not (extra or missing or renamed or renumbered):
            if foreign:
                warnings.append(
                    f"warning: the training set '{model_set}' is your own (--dataset) but the "
                    f"test set '{name}' is not (the config's built-in one?): it is evaluated "
                    f"although it is not your validation data (same categories)")
            continue
        if (missing and not (extra or renamed or renumbered)
                and cfg.DATASETS.TEST_CATEGORY_SUBSET and name in summaries
                and summaries[name].format == "coco" and all(i is not None for i, _ in model)):
            summaries[name].model_category_ids = [i for i, _ in model]
            summaries[name].model_category_names = [n for _, n in model]
            warnings.append(
                f"test set '{name}' has {len(other)} of the training set's {len(model)} "
                f"categories: evaluated on those only (DATASETS.TEST_CATEGORY_SUBSET True)")
            continue
        parts = []
        if extra:
            parts.append(f"categories the training set lacks (the model cannot predict them): "
                         f"{_show(extra)}")
        if missing:
            parts.append(f"training categories it lacks: {_show(missing)}")
        if renamed:
            by_id = all(i is not None for i, _ in model + other)
            parts.append(f"a different name for the same {'id' if by_id else 'class'}: "
                         + ", ".join(f"{i} '{a}' (training) vs '{b}' (test)"
                                     for i, a, b in renamed[:6]))
        if renumbered:
            parts.append("the same name with another id: " + ", ".join(
                f"'{n}' id {a} (training) vs {b} (test)" for n, a, b in renumbered[:6]))
        advice = []
        if foreign:
            advice.append(f"DATASETS.TEST names '{name}', which is not one of your --dataset "
                          f"sets (the config's built-in test set?): register your validation "
                          f"set with --dataset NAME JSON IMAGE_DIR and set DATASETS.TEST "
                          f"\"('NAME',)\" (or DATASETS.TEST \"()\" for no evaluation)")
        else:
            if extra:
                advice.append("remove the extra categories and their annotations from the test "
                              "json, or train on a training set that has them")
            if renamed or renumbered:
                advice.append("give both files the same category ids and names (the evaluation "
                              "matches predictions to the ground truth by category id)")
            if missing and not (extra or renamed or renumbered):
                advice.append("list all training categories in the test json, or set "
                              "DATASETS.TEST_CATEGORY_SUBSET True to evaluate on its categories "
                              "only (COCO-format --dataset test sets)")
        raise ConfigDataError(
            f"the categories of the test set '{name}' differ from those of the training set "
            f"'{model_set}' (matched by id and name): " + "; ".join(parts) + ". "
            + "; ".join(advice))
    return warnings


def check_config_against_data(cfg, summaries: Dict[str, DatasetSummary], eval_only: bool = False
                              ) -> Tuple[List[str], List[str]]:
    """Check `cfg` against its datasets.

    Args:
        cfg: the merged config (rsloss_d2 keys included).
        summaries: ``{name: DatasetSummary}`` of the datasets given with ``--dataset``; other
            datasets are checked through their metadata (``thing_classes``) where it is known.
            A test set evaluated on a subset of the training categories gets them set here.
        eval_only: the run only evaluates (no training-data checks; NUM_CLASSES against the
            training set if it is given with ``--dataset``, else against the test sets).

    Returns:
        ``(extra_opts, messages)``: config ``KEY VALUE`` pairs to append (the mask format) and
        one line for each of them and each warning. Raises :class:`ConfigDataError` naming the
        dataset, the key and the values.
    """
    train_names: Sequence[str] = list(cfg.DATASETS.TRAIN)
    test_names: Sequence[str] = list(cfg.DATASETS.TEST)
    # the model's classes are the training set's, when it is known to be the one trained on
    model_known = bool(train_names) and (
        not eval_only or all(_is_own(n, summaries) for n in train_names))
    if model_known:
        _check_num_classes(cfg, train_names, "training set", summaries)
    else:
        _check_num_classes(cfg, test_names, "test set", summaries)
    messages = []
    if model_known:
        model = category_table(train_names[0], summaries)
        for name in train_names[1:]:
            other = category_table(name, summaries)
            if model is not None and other is not None and other != model:
                raise ConfigDataError(
                    f"the training sets '{train_names[0]}' and '{name}' have different "
                    f"categories ({_show(model)} vs {_show(other)}): they are trained as one "
                    f"set, so give them the same category ids and names")
        messages += _check_test_categories(cfg, summaries, train_names[0], test_names)
    extra = []
    if eval_only:
        return extra, messages
    train = [summaries[n] for n in train_names if n in summaries]
    if train and len(train) == len(train_names) and not sum(s.num_instances for s in train):
        s = train[0]
        raise ConfigDataError(
            f"the training set '{s.name}' ({s.json_file}) has no annotations to train on "
            f"({s.num_images} images, {s.num_annotations} annotations, none of them a non-crowd "
            f"object): training would stop with Detectron2's 'No valid data found' or, with "
            f"DATALOADER.FILTER_EMPTY_ANNOTATIONS False, run with every loss exactly 0")
    if cfg.MODEL.MASK_ON:
        for s in train:
            if s.num_without_segmentation:
                raise ConfigDataError(
                    f"MODEL.MASK_ON is True but {s.num_without_segmentation} non-crowd "
                    f"annotations of the training set '{s.name}' ({s.json_file}) have no "
                    f"'segmentation' (or an empty one), e.g. {s.first_without_segmentation}: "
                    f"give them masks, or train a box-only model (MODEL.MASK_ON False)")
            if s.num_degenerate_polygons:
                raise ConfigDataError(
                    f"MODEL.MASK_ON is True but {s.num_degenerate_polygons} non-crowd "
                    f"annotations of the training set '{s.name}' ({s.json_file}) have only "
                    f"polygons of fewer than 3 points, e.g. {s.first_degenerate_polygon}: fix "
                    f"their masks, or train a box-only model (MODEL.MASK_ON False), which keeps "
                    f"them as boxes")
    rle = [s for s in train if s.num_rle_masks]
    if rle and cfg.INPUT.MASK_FORMAT == "polygon":
        extra += ["INPUT.MASK_FORMAT", "bitmask"]
        messages.append(
            f"training set '{rle[0].name}' stores {rle[0].num_rle_masks} masks as RLE, which "
            f"INPUT.MASK_FORMAT polygon cannot hold: training with INPUT.MASK_FORMAT bitmask")
    return extra, messages
