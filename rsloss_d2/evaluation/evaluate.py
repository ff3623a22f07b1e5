"""One COCO / LVIS evaluation from COCO-format files: AP (equal to pycocotools / lvis-api), Optimal
LRP and ranking quality from a single vectorised matching.

Public, outside Detectron2 (the evaluators in `evaluators.py` call `evaluate_coco` /
`evaluate_lvis`):

* `compute_coco_ap(gt_json, coco_results, iou_type="bbox")`: pycocotools' `COCOeval.stats[0:6]`;
* `compute_lvis_ap(gt_json, lvis_results, iou_type="bbox", max_dets=300)`: the AP entries of
  lvis-api's `LVISEval.results`;
* `ranking_quality(gt_json, coco_results, iou_type="bbox")` (and `ranking_quality_lvis`):
  Spearman's correlation of score and IoU over the true positives (see `ranking.py`);
* `true_positives(...)`: the true positives themselves (class, image, score, IoU), for plots.

`gt_json` is a path, a loaded dict or a pycocotools `COCO` / `lvis.LVIS` object; results are
lists of COCO result dicts (or a json path).
"""
import numpy as np

from .ap import IOU_THRS, coco_stats, lvis_stats, precision_table
from .olrp import olrp_results
from .parse import match_data, prepare_coco, prepare_lvis
from .ranking import ranking_stats

__all__ = ["evaluate_coco", "evaluate_lvis", "compute_coco_ap", "compute_lvis_ap",
           "ranking_quality", "ranking_quality_lvis", "true_positives"]

RANKING_IOU = 0.5  # a true positive of the ranking-quality numbers: IoU >= 0.5, area "all"


def _evaluate(data, keep, max_dets_per_group, not_exhaustive, tau, ap, olrp, ranking,
              frequency=None):
    taus = IOU_THRS if ap else np.array([RANKING_IOU])
    m = match_data(data, keep, taus, max_dets_per_group, not_exhaustive, iou_index=0)
    out = {"cat_ids": data.cat_ids, "img_ids": data.img_ids}
    if ap:
        precision = precision_table(m.det_cat, m.det_img, m.det_rank, m.det_score, m.matched,
                                    m.ignored, m.npig)
        out["ap"] = (coco_stats(precision) if frequency is None
                     else lvis_stats(precision, frequency))
        out["precision"] = precision
    if olrp:
        if tau == taus[0]:
            out["olrp"] = olrp_results(m, tau, data.cat_ids, frequency)
        else:  # another IoU threshold: a matching of its own
            m_tau = match_data(data, keep, [tau], max_dets_per_group, not_exhaustive)
            out["olrp"] = olrp_results(m_tau, tau, data.cat_ids, frequency)
    if ranking:
        out["ranking"] = _ranking(m, data.cat_ids)
    out["matching"] = m
    return out


def _tp_mask(m):
    return m.matched[0, 0] & ~m.ignored[0, 0]  # threshold 0.5, area "all"


def _ranking(m, cat_ids):
    tp = _tp_mask(m)
    res = ranking_stats(m.det_cat[tp], m.det_img[tp], m.det_rank[tp], m.det_score[tp],
                        m.iou[0][tp], len(cat_ids))
    pc = res.pop("per_class")
    res["per_class"] = {cid: {"spearman": float(pc["spearman"][k]),
                              "num_tp": int(pc["num_tp"][k])}
                        for k, cid in enumerate(cat_ids) if pc["num_tp"][k] > 0}
    return res


def evaluate_coco(gt, results, iou_type="bbox", img_ids=None, max_dets=100, tau=0.5, ap=True,
                  olrp=True, ranking=True):
    """AP, oLRP and ranking quality of COCO results from one matching.

    Args:
        gt: COCO ground truth (path, dict or pycocotools `COCO`); results: list of COCO result
            dicts (or a json path); iou_type: "bbox" or "segm"; img_ids: evaluate only these
            images; max_dets: detections per image and class (COCO's maxDets[-1]); tau: the IoU
            threshold of oLRP; ap / olrp / ranking: which parts to compute.
    Returns:
        dict with, for the parts asked for: "ap" (`compute_coco_ap`'s dict, fractions, -1
        where undefined), "precision" (float64 (T, R, K, A), pycocotools' `eval["precision"]`
        at maxDets `max_dets`), "olrp" (`compute_olrp`'s dict), "ranking"
        (`ranking_quality`'s dict); and "cat_ids", "img_ids" (the evaluated ids, sorted),
        "matching" (the `parse.Matching`).
    """
    data, keep = prepare_coco(gt, results, iou_type, img_ids)
    return _evaluate(data, keep, max_dets, None, tau, ap, olrp, ranking)


def evaluate_lvis(gt, results, iou_type="bbox", max_dets=300, tau=0.5, ap=True, olrp=True,
                  ranking=True):
    """`evaluate_coco` for LVIS results (federated rules, `max_dets` per image over all
    classes); "ap" is `compute_lvis_ap`'s dict, "olrp" `compute_olrp_lvis`'s."""
    data, keep, not_exhaustive, frequency = prepare_lvis(gt, results, iou_type, max_dets)
    return _evaluate(data, keep, None, not_exhaustive, tau, ap, olrp, ranking, frequency)


def compute_coco_ap(gt_json, coco_results, iou_type="bbox"):
    """COCO AP, equal to pycocotools' `COCOeval(gt, gt.loadRes(results), iou_type)` after
    evaluate / accumulate / summarize (all images and classes of the ground truth).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl"}: `COCOeval.stats[0:6]` (fractions; -1 where
        pycocotools gives -1, e.g. no GT in an area range).
    """
    return evaluate_coco(gt_json, coco_results, iou_type, olrp=False, ranking=False)["ap"]


def compute_lvis_ap(gt_json, lvis_results, iou_type="bbox", max_dets=300):
    """LVIS AP, equal to lvis-api's `LVISEval(gt, LVISResults(gt, results, max_dets),
    iou_type)` after run(), quirks included: mask results that carry a "bbox" use the box area
    for the area ranges (Detectron2 drops "bbox" before evaluating masks), a GT with id 0 is
    never matched.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}: fractions, -1 where
        undefined (as lvis-api).
    """
    return evaluate_lvis(gt_json, lvis_results, iou_type, max_dets, olrp=False,
                         ranking=False)["ap"]


def ranking_quality(gt_json, coco_results, iou_type="bbox"):
    """Ranking quality of COCO results: how well the scores sort the true positives by IoU.

    The true positives are exactly those of pycocotools' `COCOeval` at IoU 0.5, area "all", 100
    detections per image and class (greedy matching by score, crowd and ignore rules), each
    with the IoU of the object it matched.

    Returns:
        {"spearman": Spearman's rank correlation of score and IoU pooled over all true
        positives, "spearman_class_mean": its mean over the classes with >= 10 true positives,
        "num_tp": the number of true positives, "top10_iou" / "mean_iou": mean IoU of the 10
        highest-scored / of all true positives of those classes, "per_class": {category_id:
        {"spearman", "num_tp"}}} (NaN where undefined; definitions in `ranking.py`).
    """
    return evaluate_coco(gt_json, coco_results, iou_type, ap=False, olrp=False)["ranking"]


def ranking_quality_lvis(gt_json, lvis_results, iou_type="bbox", max_dets=300):
    """`ranking_quality` under LVIS's rules (federated matching, `max_dets` per image)."""
    return evaluate_lvis(gt_json, lvis_results, iou_type, max_dets, ap=False,
                         olrp=False)["ranking"]


def true_positives(gt_json, results, iou_type="bbox", lvis=False):
    """The true positives of `ranking_quality` (or `ranking_quality_lvis` with `lvis=True`).

    Returns:
        {"category_id": int64 (N,), "image_id": int64 (N,), "score": float64 (N,),
        "iou": float64 (N,)} in evaluation order (class, then descending score).
    """
    ev = (evaluate_lvis if lvis else evaluate_coco)(gt_json, results, iou_type, ap=False,
                                                    olrp=False, ranking=False)
    m = ev["matching"]
    tp = _tp_mask(m)
    order = np.lexsort((m.det_rank[tp], m.det_img[tp], -m.det_score[tp], m.det_cat[tp]))
    cat_ids = np.asarray(ev["cat_ids"])
    return {"category_id": cat_ids[m.det_cat[tp][order]],
            "image_id": np.asarray(ev["img_ids"])[m.det_img[tp][order]],
            "score": m.det_score[tp][order], "iou": m.iou[0][tp][order]}
