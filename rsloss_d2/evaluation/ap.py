"""COCO / LVIS average precision from a `parse.Matching`, vectorised over classes, IoU thresholds
and area ranges, with the floating-point operations of pycocotools' `COCOeval.accumulate()` /
`summarize()` and lvis-api's `LVISEval.accumulate()` / `summarize()` (so the numbers are equal,
not merely close).

Per class, IoU threshold and area range: the class's detections in evaluation order (descending
score, stable: ties by image, then by rank in the image), cumulative TP / FP counts (ignored
detections add to neither), recall = TP / N_GT, precision = TP / (TP + FP + eps) made monotone
from the right, and the precision at each of the 101 recall thresholds is the monotone precision
at the first detection whose recall reaches it (0 if none does); -1 for a class without
non-ignored GT. AP is the mean of the entries > -1 of the (threshold, recall, class) table.
"""
import numpy as np

from .olrp_core import _ranks_of_sorted

__all__ = ["IOU_THRS", "REC_THRS", "precision_table", "coco_stats", "lvis_stats"]

# the expressions of pycocotools' Params.setDetParams / lvis-api's Params (bit-identical values)
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def _min_true_positives(npig):
    """int64 (K, A, R): the least TP count c with float64 c / npig >= REC_THRS[r] (the recall
    `tp / npig` that pycocotools compares with `searchsorted`); float division by a fixed
    positive number is monotone, so 'recall >= r' is exactly 'TP >= c'."""
    n = np.maximum(npig, 1).astype(np.float64)[..., None]
    r = REC_THRS
    c = np.ceil(r * n)
    for _ in range(3):  # the estimate is off by at most one either way
        c = np.where((c >= 1) & ((c - 1) / n >= r), c - 1, c)
        c = np.where(c / n < r, c + 1, c)
    return c.astype(np.int64)


def _reverse_cummax_plan(start, end):
    """Index plans (one per power-of-two width) to take the maximum to the right within each
    segment [start[k], end[k]) of a flat array."""
    length = end - start
    width = 1 << np.ceil(np.log2(np.maximum(length, 1))).astype(np.int64)
    plans = []
    for w in np.unique(width[length > 0]):
        segs = np.nonzero((width == w) & (length > 0))[0]
        idx = start[segs][:, None] + np.arange(w)[None, :]
        valid = np.arange(w)[None, :] < length[segs][:, None]
        plans.append((np.where(valid, idx, 0), valid, idx[valid]))
    return plans


def precision_table(det_cat, det_img, det_rank, det_score, matched, ignored, npig):
    """Precision at the 101 recall thresholds (pycocotools' `eval["precision"]` for one maxDets).

    Args:
        det_cat, det_img, det_rank: int64 (D,) category index, image index and rank in the
            (image, category) group of the detections that take part; det_score: float64 (D,).
        matched, ignored: bool (T, A, D) (see `olrp_core.match`).
        npig: int64 (K, A) number of non-ignored GTs per category and area range.
    Returns:
        float64 (T, R, K, A); -1 where the category has no non-ignored GT in that range.

    Only the true positives' positions are needed: the precision made monotone from the right
    at the position where the TP count first reaches c is the maximum precision over the c-th
    and later true positives of the class (between two true positives the precision only falls,
    and before the first it is 0), so the table is built from the TPs alone, with the FP counts
    and the float operations of pycocotools at those positions.
    """
    T, A, D = matched.shape
    K = npig.shape[0]
    S = T * A * K  # segments: one per (threshold, area range, class)
    order = np.lexsort((det_rank, det_img, -det_score, det_cat))
    cats = det_cat[order]
    start = np.searchsorted(cats, np.arange(K))  # first position of each class
    parts = []
    for t in range(T):  # one threshold at a time bounds the memory (A, D) per step
        m = matched[t][:, order]
        keep = ~ignored[t][:, order]
        fp_count = np.cumsum((~m & keep).view(np.uint8), axis=1, dtype=np.int32)  # (A, D)
        a_i, p_i = np.nonzero(m & keep)  # true positives, sorted by (area range, position)
        first = start[cats[p_i]]
        fp_before = np.where(first > 0, fp_count[a_i, np.maximum(first - 1, 0)], 0)
        parts.append(((t * A + a_i) * K + cats[p_i],
                      fp_count[a_i, p_i].astype(np.int64) - fp_before))
    seg = np.concatenate([p[0] for p in parts])  # (threshold, area, class) id, non-decreasing
    tp = (_ranks_of_sorted(seg) + 1).astype(np.float64)  # TP count within the class
    fp = np.concatenate([p[1] for p in parts]).astype(np.float64)
    pr = tp / (fp + tp + np.spacing(1))
    # maximum to the right within each segment
    seg_start = np.searchsorted(seg, np.arange(S + 1))
    env = np.empty_like(pr)
    for idx, valid, flat in _reverse_cummax_plan(seg_start[:-1], seg_start[1:]):
        v = np.where(valid, pr[idx], -1.0)
        env[flat] = np.maximum.accumulate(v[:, ::-1], axis=-1)[:, ::-1][valid]
    # precision at recall r: at the first TP with count >= need (a count of 0 -> the first TP)
    need = np.maximum(_min_true_positives(npig), 1).transpose(2, 0, 1)[None]  # (1, R, K, A)
    n_tp = np.diff(seg_start).reshape(T, A, K).transpose(0, 2, 1)[:, None]  # (T, 1, K, A)
    first = seg_start[:-1].reshape(T, A, K).transpose(0, 2, 1)[:, None]
    hit = need <= n_tp  # (T, R, K, A)
    val = np.zeros(hit.shape)
    if len(env):
        val = np.where(hit, env[np.minimum(first + need - 1, len(env) - 1)], 0.0)
    return np.where((npig > 0)[None, None], val, -1.0)


def _mean(s):
    """pycocotools' / lvis-api's summary: mean of the entries > -1, -1 if there is none."""
    s = s[s > -1]
    return -1.0 if len(s) == 0 else float(np.mean(s))


def coco_stats(precision):
    """`COCOeval.stats[0:6]` from a (T, R, K, A) precision table (fractions, -1 if undefined):
    {"AP", "AP50", "AP75", "APs", "APm", "APl"}."""
    t50 = np.where(0.5 == IOU_THRS)[0]
    t75 = np.where(0.75 == IOU_THRS)[0]
    return {"AP": _mean(precision[:, :, :, 0]), "AP50": _mean(precision[t50][:, :, :, 0]),
            "AP75": _mean(precision[t75][:, :, :, 0]), "APs": _mean(precision[:, :, :, 1]),
            "APm": _mean(precision[:, :, :, 2]), "APl": _mean(precision[:, :, :, 3])}


def lvis_stats(precision, frequency):
    """The AP entries of `LVISEval.results`, with "APr" / "APc" / "APf" over the classes whose
    `frequency` (a letter per class, in class order) is r / c / f."""
    res = coco_stats(precision)
    frequency = np.asarray(frequency)
    for f in ("r", "c", "f"):
        res["AP" + f] = _mean(precision[:, :, np.nonzero(frequency == f)[0], 0])
    return res
