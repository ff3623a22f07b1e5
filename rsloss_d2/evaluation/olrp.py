"""Optimal LRP (oLRP) for COCO-format and LVIS-format data, computed with vectorised NumPy.

Definition (Oksuz et al., "One Metric to Measure them All", TPAMI 2021, Sec. 4): for one class
and one score threshold, with detections matched to GTs at IoU >= tau (= 0.5),

    LRP = ( sum_{TP} (1 - IoU) / (1 - tau) + N_FP + N_FN ) / ( N_TP + N_FP + N_FN )

and oLRP of a class is the minimum of LRP over the score thresholds (the prefixes of the class's
detections sorted by descending score). The reported "oLRP" is the mean over the classes that
have ground truth; "oLRP_loc" = mean of sum(1 - IoU) / N_TP, "oLRP_FP" = mean of 1 - precision,
"oLRP_FN" = mean of 1 - recall, all taken at each class's LRP-optimal threshold.

The bookkeeping is that of the official LRP-Error COCO / LVIS evaluation (its patched
`cocoeval.py` and `lvis-api`): COCO's greedy matching (crowd rule, ignored GTs, area ranges,
maxDets per image and category), stable (mergesort) ordering by descending score across images,
the first minimum of LRP, -1 for a class without non-ignored GT (left out of every mean) and NaN
for a component that is undefined (no true positive: such a class counts with oLRP = oLRP_FN = 1
and is left out of the loc / FP means). Results are percentages (0-100); a mean over no class is
NaN (the official code's -1, which Detectron2 also reports as NaN).
"""
import numpy as np

from .olrp_core import accumulate
from .parse import load_gt_dataset, match_data, prepare_coco, prepare_lvis

__all__ = ["compute_olrp", "compute_olrp_lvis", "lrp_curves", "load_gt_dataset", "olrp_results"]

_SUFFIXES = ("", "_s", "_m", "_l")
_FREQUENCIES = ("r", "c", "f")


def olrp_results(m, tau, cat_ids, frequency=None, t_index=0):
    """The result dict of `compute_olrp` (and, given `frequency`, the r/c/f means of
    `compute_olrp_lvis`) from a `parse.Matching` whose threshold `t_index` is `tau`."""
    acc = accumulate(m.det_cat, m.det_img, m.det_rank, m.det_score, m.matched[t_index],
                     m.ignored[t_index], m.iou, m.npig, tau)
    res = _results(acc, cat_ids)
    if frequency is not None:
        frequency = np.asarray(frequency)
        for f in _FREQUENCIES:
            res["oLRP_" + f] = _mean_percent(acc["olrp"][frequency == f, 0])
    return res


def _mean_percent(values):
    """Official summary rule: drop NaN, average the values > -1; NaN if none is left."""
    v = values[~np.isnan(values)]
    v = v[v > -1]
    return float(np.mean(v) * 100) if len(v) else float("nan")


def _results(acc, cat_ids):
    res = {}
    for a, sfx in enumerate(_SUFFIXES):
        res["oLRP" + sfx] = _mean_percent(acc["olrp"][:, a])
        res["oLRP_loc" + sfx] = _mean_percent(acc["loc"][:, a])
        res["oLRP_FP" + sfx] = _mean_percent(acc["fp"][:, a])
        res["oLRP_FN" + sfx] = _mean_percent(acc["fn"][:, a])
    per_class = {}
    for k, cid in enumerate(cat_ids):
        if acc["olrp"][k, 0] == -1:  # no non-ignored GT: left out
            continue
        per_class[cid] = {
            "oLRP": float(acc["olrp"][k, 0] * 100),
            "oLRP_loc": float(acc["loc"][k, 0] * 100),
            "oLRP_FP": float(acc["fp"][k, 0] * 100),
            "oLRP_FN": float(acc["fn"][k, 0] * 100),
            "threshold": float(acc["thr"][k, 0]),
        }
    res["per_class"] = per_class
    return res


def compute_olrp(gt, detections, iou_type="bbox", tau=0.5, max_dets=100, img_ids=None):
    """Optimal LRP of COCO-format detections, equal to the official LRP-Error COCO evaluation.

    Args:
        gt: COCO-format ground truth: a dict, a json path, or a pycocotools `COCO` object.
        detections: list of COCO result dicts (`image_id`, `category_id`, `score`, and `bbox`
            [x, y, w, h] for "bbox" / `segmentation` (RLE) for "segm"), or a json path.
        iou_type: "bbox" or "segm".
        tau: IoU threshold of a true positive (0.5 in the papers).
        max_dets: detections kept per image and category (top scores; COCO's maxDets).
        img_ids: evaluate only these images (default: all images of `gt`).
    Returns:
        dict of percentages: "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN" (area "all") and the same
        with suffixes "_s", "_m", "_l" (small / medium / large); "per_class":
        {category_id: {"oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN" (percent), "threshold" (the raw
        LRP-optimal score)}} for the categories with non-ignored GT. A class whose detections
        give no true positive (including a class without detections) has oLRP = oLRP_FN = 100
        and NaN loc / FP / threshold. With no detections at all every class is such a class.
    Raises:
        FileNotFoundError / ValueError / TypeError for a missing or malformed `gt`, and
        ValueError for detections that refer to image or category ids not in `gt`.

    The area of a detection follows `COCO.loadRes`: the box area when the first result has a
    non-empty `bbox`, else the mask area (Detectron2 drops `bbox` from mask results for that
    reason). A match to a GT with annotation id 0 counts as unmatched, as in pycocotools.
    """
    data, keep = prepare_coco(gt, detections, iou_type, img_ids)
    return olrp_results(match_data(data, keep, [tau], max_dets), tau, data.cat_ids)


def lrp_curves(gt, detections, iou_type="bbox", tau=0.5, max_dets=100, img_ids=None):
    """LRP at every score threshold (area "all"), with the bookkeeping of `compute_olrp`.

    Returns:
        {category_id: {"score", "LRP", "TP", "FP", "FN", "loc"}} for the categories with GT and
        detections: float64 arrays over the class's detections in evaluation order (descending
        score); entry n is the prefix ending at detection n, i.e. the score threshold
        `score[n]`. "LRP" is a fraction in [0, 1] (not a percentage); "loc" = sum of 1 - IoU
        over the TPs. Ignored detections occupy a position with unchanged counts.
    """
    data, keep = prepare_coco(gt, detections, iou_type, img_ids)
    m = match_data(data, keep, [tau], max_dets)
    acc = accumulate(m.det_cat, m.det_img, m.det_rank, m.det_score, m.matched[0], m.ignored[0],
                     m.iou, m.npig, tau, curves=True)
    return {data.cat_ids[k]: v for k, v in acc["curves"].items()}


def compute_olrp_lvis(gt, detections, iou_type="bbox", tau=0.5, max_dets=300):
    """Optimal LRP under LVIS's federated rules, equal to the official LRP-Error LVIS evaluation.

    Same arguments and result as `compute_olrp` (with `gt` in LVIS format: images carry
    `neg_category_ids` and `not_exhaustive_category_ids`, categories a `frequency` in r/c/f),
    plus "oLRP_r", "oLRP_c", "oLRP_f": mean oLRP over rare / common / frequent classes. Rules
    (lvis-api's `LVISResults` / `LVISEval`, see `parse.prepare_lvis`): the `max_dets`
    top-scoring detections per image over all classes are kept; GTs and detections with area
    <= 0 are dropped; a detection of a class neither annotated in the image nor in its
    `neg_category_ids` is dropped; an unmatched detection of a class in the image's
    `not_exhaustive_category_ids` is ignored (not a false positive); no crowd handling, no
    per-class maxDets.
    """
    data, keep, not_exhaustive, frequency = prepare_lvis(gt, detections, iou_type, max_dets)
    m = match_data(data, keep, [tau], None, det_unmatched_ignore=not_exhaustive)
    return olrp_results(m, tau, data.cat_ids, frequency)
