"""A plain, loop-by-loop reference of the official LRP-Error bookkeeping (its `cocoeval.py` /
`lvis-api`), written for the tests only: per image, per category, per detection, no
vectorisation."""
import math

import numpy as np
import pycocotools.mask as mask_utils

AREAS = [(0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10)]


def box_iou(d, g, crowd):
    """IoU of two xywh boxes; crowd GT: intersection / detection area."""
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union


def _rle(segm, img):
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, img["height"], img["width"]))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, img["height"], img["width"])
    return segm


def _iou(d, g, crowd, iou_type, img):
    if iou_type == "bbox":
        return box_iou(d["bbox"], g["bbox"], crowd)
    return float(mask_utils.iou([_rle(d["segmentation"], img)], [_rle(g["segmentation"], img)],
                                [int(crowd)])[0, 0])


def _match_image(gts, dts, area, iou_type, img, tau, crowd_ok, det_extra_ignore):
    """COCOeval.evaluateImg at one threshold. Returns per detection (in score order):
    (score, matched_gt_id or 0, ignored, iou) and the GT ignore flags."""
    lo, hi = area
    g_ign = [1 if (g["_ign0"] or g["area"] < lo or g["area"] > hi) else 0 for g in gts]
    order = sorted(range(len(gts)), key=lambda i: g_ign[i])  # stable: ignored last
    gts = [gts[i] for i in order]
    g_ign = [g_ign[i] for i in order]
    taken = [False] * len(gts)
    out = []
    for d in dts:
        best, m = min(tau, 1 - 1e-10), -1
        for j, g in enumerate(gts):
            crowd = crowd_ok and bool(g.get("iscrowd", 0))
            if taken[j] and not crowd:
                continue
            if m > -1 and g_ign[m] == 0 and g_ign[j] == 1:
                break
            v = _iou(d, g, crowd, iou_type, img)
            if v < best:
                continue
            best, m = v, j
        if m == -1:
            dm, ig, v = 0, False, 0.0
        else:
            taken[m] = True
            dm, ig, v = gts[m]["id"], bool(g_ign[m]), best
        d_area = d["_area"]
        if dm == 0 and (d_area < lo or d_area > hi or det_extra_ignore(d)):
            ig = True
        out.append((d["score"], dm, ig, v))
    return out, g_ign


def _lrp(records, npig, tau):
    """The official accumulate() for one class / area; records = [(score, matched_id, ignored,
    iou)]."""
    if npig == 0:
        return (-1.0, -1.0, -1.0, -1.0, -1.0)
    order = sorted(range(len(records)), key=lambda i: -records[i][0])  # stable
    tp = fp = 0
    loc_iou = 0.0
    best = None
    any_tp = False
    for i in order:
        score, m, ig, v = records[i]
        if m and not ig:
            tp += 1
            loc_iou += v
            any_tp = True
        elif not m and not ig:
            fp += 1
        fn = npig - tp
        loc = tp - loc_iou
        lrp = (loc / (1 - tau) + fp + fn) / (tp + fp + fn)
        if best is None or lrp < best[0]:
            lf = loc / tp if tp else math.nan
            fpr = fp / (tp + fp) if tp + fp else math.nan
            best = (lrp, lf, fpr, fn / npig, score)
    if not records or not any_tp:
        return (1.0, math.nan, math.nan, 1.0, math.nan)
    return best


def reference_olrp(gt, dets, iou_type="bbox", tau=0.5, max_dets=100, lvis=False):
    """Returns {cat_id: [ (olrp, loc, fp, fn, thr) for the 4 area ranges ]} (fractions, -1 for
    no GT, NaN for undefined), following COCOeval (lvis=False) or LVISEval (lvis=True)."""
    imgs = {im["id"]: im for im in gt["images"]}
    cats = sorted(c["id"] for c in gt["categories"])
    dets = [dict(d) for d in dets]
    if lvis:  # LVISResults: top max_dets per image over all classes
        per_img = {}
        for d in dets:
            per_img.setdefault(d["image_id"], []).append(d)
        dets = [d for ds in per_img.values()
                for d in sorted(ds, key=lambda d: d["score"], reverse=True)[:max_dets]]
    box_area = bool(dets) and "bbox" in dets[0] and (lvis or dets[0]["bbox"] != [])
    for d in dets:
        d["_area"] = (d["bbox"][2] * d["bbox"][3] if box_area
                      else float(mask_utils.area(_rle(d["segmentation"], imgs[d["image_id"]]))))
    gts = [dict(g) for g in gt["annotations"] if g["category_id"] in cats]
    for g in gts:
        g["_ign0"] = bool(g.get("ignore", 0)) if lvis else bool(g.get("iscrowd", 0))
    if lvis:
        gts = [g for g in gts if 0 < g["area"] < math.inf]
        dets = [d for d in dets if 0 < d["_area"] < math.inf]
        pos = {}
        for g in gts:
            pos.setdefault(g["image_id"], set()).add(g["category_id"])
        dets = [d for d in dets if d["category_id"] in pos.get(d["image_id"], set())
                or d["category_id"] in imgs[d["image_id"]]["neg_category_ids"]]
    out = {}
    for c in cats:
        out[c] = []
        for area in AREAS:
            records, npig = [], 0
            for img_id in sorted(imgs):
                g_here = [g for g in gts if g["image_id"] == img_id and g["category_id"] == c]
                d_here = [d for d in dets if d["image_id"] == img_id and d["category_id"] == c]
                d_here = sorted(d_here, key=lambda d: -d["score"])  # stable
                if not lvis:
                    d_here = d_here[:max_dets]
                nel = imgs[img_id].get("not_exhaustive_category_ids", []) if lvis else []
                res, g_ign = _match_image(g_here, d_here, area, iou_type, imgs[img_id], tau,
                                          not lvis, lambda d: d["category_id"] in nel)
                records += res
                npig += sum(1 for x in g_ign if x == 0)
            out[c].append(_lrp(records, npig, tau))
    return out


def summarize(ref, area=0, index=0):
    """Official summary (drop NaN, mean of values > -1) in percent; NaN if empty."""
    vals = [v[area][index] for v in ref.values()]
    vals = [v for v in vals if not math.isnan(v) and v > -1]
    return sum(vals) / len(vals) * 100 if vals else math.nan


def lrp_from_cocoeval(gt, dets, iou_type="bbox", max_dets=100, tau=0.5):
    """Run pycocotools' COCOeval.evaluate() and recompute LRP from its per-image matches at
    iouThrs[0] (dtMatches / dtIgnore / gtIgnore, IoUs from `coco_eval.ious`). Same return
    format as `reference_olrp`."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.dataset.setdefault("info", {})  # pycocotools 2.0.10's loadRes copies these
        coco_gt.dataset.setdefault("licenses", [])
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.params.iouThrs = np.array([tau])
        ev.evaluate()
    p = ev.params
    A, n_img = len(p.areaRng), len(p.imgIds)
    out = {}
    for k, cat in enumerate(p.catIds):
        out[cat] = []
        for a in range(A):
            records, npig = [], 0
            for i, img in enumerate(p.imgIds):
                e = ev.evalImgs[k * A * n_img + a * n_img + i]
                if e is None:
                    continue
                gt_cols = [g["id"] for g in ev._gts[img, cat]]
                ious = ev.ious[img, cat]
                for j, score in enumerate(e["dtScores"][:max_dets]):
                    m = int(e["dtMatches"][0, j])
                    ig = bool(e["dtIgnore"][0, j])
                    v = float(ious[j, gt_cols.index(m)]) if e["dtMatches"][0, j] else 0.0
                    records.append((score, m, ig, v))
                npig += int((e["gtIgnore"] == 0).sum())
            out[cat].append(_lrp(records, npig, tau))
    return out


def lrp_from_lvis_eval(gt, dets, iou_type="bbox", max_dets=300, tau=0.5):
    """Same as `lrp_from_cocoeval` with the LVIS API (`LVISResults` + `LVISEval.evaluate()`)."""
    import copy
    import logging

    from lvis import LVIS, LVISEval, LVISResults

    logging.getLogger("lvis").setLevel(logging.ERROR)
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = copy.deepcopy(gt)
    lvis_gt._create_index()
    res = LVISResults(lvis_gt, copy.deepcopy(dets), max_dets=max_dets)
    ev = LVISEval(lvis_gt, res, iou_type)
    ev.params.iou_thrs = np.array([tau])
    ev.evaluate()
    p = ev.params
    A, n_img = len(p.area_rng), len(p.img_ids)
    out = {}
    for k, cat in enumerate(p.cat_ids):
        out[cat] = []
        for a in range(A):
            records, npig = [], 0
            for i, img in enumerate(p.img_ids):
                e = ev.eval_imgs[k * A * n_img + a * n_img + i]
                if e is None:
                    continue
                gt_cols = [g["id"] for g in ev._gts[img, cat]]
                ious = ev.ious[img, cat]
                for j, score in enumerate(e["dt_scores"]):
                    m = int(e["dt_matches"][0, j])
                    ig = bool(e["dt_ignore"][0, j])
                    v = float(ious[j, gt_cols.index(m)]) if e["dt_matches"][0, j] else 0.0
                    records.append((score, m, ig, v))
                npig += int((e["gt_ignore"] == 0).sum())
            out[cat].append(_lrp(records, npig, tau))
    return out
