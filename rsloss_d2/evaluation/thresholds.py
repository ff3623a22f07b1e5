"""Class-specific score thresholds from the oLRP evaluation, for the demo / inference path.

The LRP-optimal threshold of a class is the score at which its LRP is minimal on the evaluation
set (Oksuz et al., TPAMI 2021, Sec. 4; the official LRP-Error README's stated practical use is to
deploy a detector with these per-class thresholds instead of one global score threshold).
"""
import json

import torch

__all__ = ["load_class_thresholds", "filter_by_class_thresholds"]


def load_class_thresholds(path, task=None, by="contiguous_id"):
    """Read `lrp_optimal_thresholds.json` written by the oLRP evaluators.

    Args:
        path: the json file.
        task: "bbox" or "segm"; default "bbox" if present, else the only task in the file.
        by: key of the returned dict: "contiguous_id" (the model's class index, as in
            `Instances.pred_classes`) or "category_id" (the dataset's id).
    Returns:
        {id: threshold}. Classes without a defined threshold (no GT in the evaluation set, or
        no true positive) are left out, so that the caller's default applies to them.
    """
    if by not in ("contiguous_id", "category_id"):
        raise ValueError(f"by must be 'contiguous_id' or 'category_id', got {by!r}")
    with open(path) as f:
        data = json.load(f)
    tasks = [t for t in ("bbox", "segm") if t in data]
    if not tasks:
        raise ValueError(f"{path} has no 'bbox' or 'segm' thresholds")
    if task is None:
        task = tasks[0]
    if task not in data:
        raise ValueError(f"{path} has no thresholds for task {task!r} (has {tasks})")
    return {int(row[by]): float(row["threshold"]) for row in data[task]
            if row.get("threshold") is not None}


def filter_by_class_thresholds(instances, thresholds, default):
    """Keep the predictions whose score reaches their class's threshold.

    Args:
        instances: Detectron2 `Instances` with `scores` (N,) and `pred_classes` (N,) (contiguous
            class indices).
        thresholds: {contiguous class id: score threshold} (e.g. `load_class_thresholds(...)`).
        default: threshold of the classes missing from `thresholds`.
    Returns:
        `instances[keep]` with keep = scores >= threshold[pred_classes].
    """
    classes = instances.pred_classes.long()
    scores = instances.scores
    n = max([int(classes.max()) + 1 if len(classes) else 0]
            + [int(k) + 1 for k in thresholds])
    table = torch.full((max(n, 1),), float(default), dtype=scores.dtype, device=scores.device)
    for k, v in thresholds.items():
        if k >= 0:
            table[int(k)] = float(v)
    return instances[scores >= table[classes]]
