"""Ranking quality: how well a detector's scores sort its true positives by localisation quality.

RS Loss (Oksuz et al., "Rank & Sort Loss for Object Detection and Instance Segmentation", ICCV
2021, Sec. 3-4) trains the scores of the positives to be sorted by their IoU ("sort"), and aLRP
Loss (NeurIPS 2020, Sec. 4) ties the ranking to localisation the same way; AP and oLRP do not
show whether that happened. Over the true positives of the COCO / LVIS matching at IoU 0.5 (area
"all", maxDets 100 per image and class for COCO, 300 per image for LVIS), each with the IoU of
the object it matched:

* "spearman": Spearman's rank correlation between score and IoU, pooled over all true
  positives (average ranks for ties, then Pearson's correlation of the ranks, as
  `scipy.stats.spearmanr`); 1 when the scores sort the true positives exactly by IoU, -1 when
  they sort them in reverse;
* "spearman_class_mean": the mean of the per-class correlations over the classes with at least
  `MIN_TP` (10) true positives and a defined correlation (NaN if there is none);
* "top10_iou" / "mean_iou": over the same classes, the mean IoU of each class's 10
  highest-scored true positives / of all its true positives (averaged over the classes): sorted
  scores put the best boxes first, so "top10_iou" exceeds "mean_iou";
* "num_tp": the number of true positives.

A correlation over fewer than two pairs, or with constant scores or IoUs, is undefined (NaN).
"""
import numpy as np

from .olrp_core import _ranks_of_sorted

__all__ = ["MIN_TP", "TOP_K", "average_ranks", "spearman_by_group", "ranking_stats"]

MIN_TP = 10  # true positives a class needs to enter the class means
TOP_K = 10  # "top10_iou": the mean IoU of this many highest-scored true positives per class


def average_ranks(values, groups):
    """1-based ranks of `values` within each group; tied values share the mean of their ranks
    (`scipy.stats.rankdata(method="average")` per group).

    Args:
        values: float64 (N,); groups: int64 (N,) group of each value.
    Returns:
        float64 (N,).
    """
    n = len(values)
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    new_block = new_group.copy()
    new_block[1:] |= v[1:] != v[:-1]
    block_start = np.flatnonzero(new_block)
    block_end = np.append(block_start[1:], n)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))[block_start]
    block_rank = (block_start + block_end - 1) / 2.0 - group_start + 1.0
    ranks = np.empty(n)
    ranks[order] = np.repeat(block_rank, block_end - block_start)
    return ranks


def spearman_by_group(x, y, groups, num_groups):
    """Spearman's rank correlation of `x` and `y` within each group.

    Args:
        x, y: float64 (N,); groups: int64 (N,) in [0, num_groups).
    Returns:
        rho: float64 (num_groups,) (NaN for a group with < 2 pairs or a constant x or y);
        count: int64 (num_groups,) pairs per group.
    """
    count = np.bincount(groups, minlength=num_groups)
    rx, ry = average_ranks(x, groups), average_ranks(y, groups)
    n = np.maximum(count, 1)
    dx = rx - (np.bincount(groups, rx, num_groups) / n)[groups]
    dy = ry - (np.bincount(groups, ry, num_groups) / n)[groups]
    sxy = np.bincount(groups, dx * dy, num_groups)
    sxx = np.bincount(groups, dx * dx, num_groups)
    syy = np.bincount(groups, dy * dy, num_groups)
    ok = (count >= 2) & (sxx > 0) & (syy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(ok, sxy / np.sqrt(sxx * syy), np.nan)
    return np.clip(rho, -1.0, 1.0), count


def ranking_stats(tp_cat, tp_img, tp_rank, tp_score, tp_iou, num_classes, min_tp=MIN_TP,
                  top_k=TOP_K):
    """Ranking-quality summary of true positives (see the module docstring).

    Args:
        tp_cat, tp_img, tp_rank: int64 (N,) class index, image index and rank in the (image,
            class) group of each true positive (the last two break score ties as the
            evaluation does); tp_score, tp_iou: float64 (N,).
        num_classes: K.
    Returns:
        {"spearman", "spearman_class_mean", "num_tp", "top10_iou", "mean_iou"} (floats; NaN
        where undefined) and "per_class": float64 (K,) correlations, int64 (K,) counts as
        {"spearman": ..., "num_tp": ...}.
    """
    N = len(tp_cat)
    pooled, _ = spearman_by_group(tp_score, tp_iou, np.zeros(N, dtype=np.int64), 1)
    rho, count = spearman_by_group(tp_score, tp_iou, tp_cat, num_classes)
    big = count >= min_tp
    defined = big & ~np.isnan(rho)
    order = np.lexsort((tp_rank, tp_img, -tp_score, tp_cat))
    cls = tp_cat[order]
    top = _ranks_of_sorted(cls) < top_k
    top_sum = np.bincount(cls[top], tp_iou[order][top], num_classes)
    all_sum = np.bincount(tp_cat, tp_iou, num_classes)
    sel = count >= max(min_tp, top_k)
    nan = float("nan")
    return {
        "spearman": float(pooled[0]),
        "spearman_class_mean": float(np.mean(rho[defined])) if defined.any() else nan,
        "num_tp": int(N),
        "top10_iou": float(np.mean(top_sum[sel] / top_k)) if sel.any() else nan,
        "mean_iou": float(np.mean(all_sum[sel] / count[sel])) if sel.any() else nan,
        "per_class": {"spearman": rho, "num_tp": count},
    }
