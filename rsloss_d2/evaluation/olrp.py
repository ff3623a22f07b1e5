"""Optimal LRP (oLRP) for COCO-format and LVIS-format data, computed with vectorised NumPy.

Definition (Oksuz et al., "One Metric to Measure them All", TPAMI 2021; spec `olrp.md` §1): for
one class and one score threshold, with detections matched to GTs at IoU >= tau (= 0.5),

    LRP = ( sum_{TP} (1 - IoU) / (1 - tau) + N_FP + N_FN ) / ( N_TP + N_FP + N_FN )

and oLRP of a class is the minimum of LRP over the score thresholds (the prefixes of the class's
detections sorted by descending score). The reported "oLRP" is the mean over the classes that
have ground truth; "oLRP_loc" = mean of sum(1 - IoU) / N_TP, "oLRP_FP" = mean of 1 - precision,
"oLRP_FN" = mean of 1 - recall, all taken at each class's LRP-optimal threshold.

The bookkeeping is that of the official LRP-Error COCO / LVIS evaluation (spec §2-§5): COCO's
greedy matching (crowd rule, ignored GTs, area ranges, maxDets per image and category), stable
(mergesort) ordering by descending score across images, the first minimum of LRP, -1 for a class
without non-ignored GT (left out of every mean) and NaN for a component that is undefined (no
true positive: such a class counts with oLRP = oLRP_FN = 1 and is left out of the loc / FP
means). Results are percentages (0-100); a mean over no class is NaN (the official code's -1,
which Detectron2 also reports as NaN).
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_utils

from .olrp_core import AREA_RANGES, accumulate, match, rank_in_groups

__all__ = ["compute_olrp", "compute_olrp_lvis", "lrp_curves", "load_gt_dataset"]

_SUFFIXES = ("", "_s", "_m", "_l")
_FREQUENCIES = ("r", "c", "f")


# ------------------------------------------------------------------------------------ parsing
def load_gt_dataset(gt):
    """Return the ground-truth dataset dict of `gt`: a dict, a json path, or an API object
    (pycocotools `COCO`, `lvis.LVIS`) with a `.dataset` dict. Raises a clear error otherwise."""
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ground-truth annotation file not found: {path!r}")
        try:
            with open(path) as f:
                gt = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"ground-truth file {path!r} is not valid json: {e}") from e
    elif hasattr(gt, "dataset") and isinstance(gt.dataset, dict):
        gt = gt.dataset
    if not isinstance(gt, dict):
        raise TypeError(f"gt must be a COCO-format dict, a json path or a COCO/LVIS api object, "
                        f"got {type(gt).__name__}")
    for key in ("images", "categories", "annotations"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"ground truth has no '{key}' list (not a COCO-format dataset, or a "
                             "test split without annotations)")
    return gt


def _load_detections(detections):
    if isinstance(detections, (str, os.PathLike)):
        with open(detections) as f:
            detections = json.load(f)
    if not isinstance(detections, (list, tuple)):
        raise TypeError(f"detections must be a list of COCO result dicts, got "
                        f"{type(detections).__name__}")
    return list(detections)


def _column(dicts, key, what):
    try:
        return [d[key] for d in dicts]
    except KeyError:
        bad = next(i for i, d in enumerate(dicts) if key not in d)
        raise ValueError(f"{what} #{bad} has no '{key}': {dicts[bad]}") from None
    except TypeError:
        raise TypeError(f"{what}s must be dicts") from None


def _boxes(values, what):
    boxes = np.array(values, dtype=np.float64) if len(values) else np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} 'bbox' entries must be [x, y, w, h]")
    return boxes


def _to_rle(segm, height, width):
    """RLE of a polygon list, an uncompressed RLE or a compressed RLE (as `COCO.annToRLE`)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _index_of(values, mapping, what, kind):
    """Positions of `values` in `mapping` (a dict id -> index); unknown ids raise."""
    out = np.fromiter((mapping.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    if (out < 0).any():
        bad = sorted({values[i] for i in np.nonzero(out < 0)[0]}, key=str)
        raise ValueError(f"{what} reference {kind} ids that are not in the ground truth: "
                         f"{bad[:10]}{' ...' if len(bad) > 10 else ''}")
    return out


def _column_list(items, what):
    if not all(isinstance(x, dict) and "id" in x for x in items):
        raise ValueError(f"every {what} of the ground truth needs an 'id'")
    return items


class _Data:
    """Flat arrays of one evaluation (images / categories as indices into the sorted id lists)."""

    def __init__(self, gt, dets, iou_type, img_ids, lvis):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.iou_type = iou_type
        self.all_images = images = {im["id"]: im for im in _column_list(gt["images"], "image")}
        self.cat_ids = sorted({c["id"] for c in _column_list(gt["categories"], "category")})
        cat_index = {c: i for i, c in enumerate(self.cat_ids)}
        all_img_ids = sorted(images)
        if img_ids is None:
            img_ids = all_img_ids
        else:
            img_ids = sorted(set(img_ids))
            _index_of(img_ids, {i: 0 for i in all_img_ids}, "img_ids", "image")
        self.img_ids = img_ids
        img_index = {im: i for i, im in enumerate(img_ids)}
        self.images = [images[i] for i in img_ids]

        # ground truth: annotations of evaluated images and known categories, json order
        anns = [a for a in gt["annotations"]
                if a.get("image_id") in img_index and a.get("category_id") in cat_index]
        ids = _column(anns, "id", "annotation")
        if len(set(ids)) != len(ids):
            raise ValueError("ground truth has duplicate annotation ids")
        self.gt_id_nonzero = np.array([i != 0 for i in ids], dtype=bool)
        self.gt_img = _index_of(_column(anns, "image_id", "annotation"), img_index, "", "image")
        self.gt_cat = _index_of(_column(anns, "category_id", "annotation"), cat_index, "", "cat")
        self.gt_area = np.array(_column(anns, "area", "annotation"), dtype=np.float64)
        if lvis:  # LVIS has no crowd; `ignore` is honoured if present
            self.gt_crowd = np.zeros(len(anns), dtype=bool)
            self.gt_ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
        else:  # COCO: ignore = iscrowd
            self.gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
            self.gt_ignore = self.gt_crowd.copy()
        if iou_type == "bbox":
            self.gt_boxes = _boxes(_column(anns, "bbox", "annotation"), "annotation")
        else:
            self.gt_rles = [_to_rle(s, images[a["image_id"]]["height"],
                                    images[a["image_id"]]["width"])
                            for a, s in zip(anns, _column(anns, "segmentation", "annotation"))]

        # detections: all must refer to known images / categories
        if dets and not all(isinstance(d, dict) for d in dets):
            raise TypeError("detections must be dicts in COCO result format")
        raw_img = _column(dets, "image_id", "detection")
        raw_cat = _column(dets, "category_id", "detection")
        _index_of(raw_img, {i: 0 for i in all_img_ids}, "detections", "image")
        self.det_cat = _index_of(raw_cat, cat_index, "detections", "category")
        self.det_img = np.fromiter((img_index.get(i, -1) for i in raw_img), np.int64, len(dets))
        self.det_score = np.array(_column(dets, "score", "detection"), dtype=np.float64)
        self.det_order = np.arange(len(dets))
        self.dets = dets

    def detection_geometry(self, box_area_rule):
        """Areas, and boxes or RLEs, of the detections (rule of COCO.loadRes / LVISResults: the
        area is the box area if the first result has a box, else the mask area)."""
        dets = self.dets
        imgs = self.all_images
        need_rle = self.iou_type == "segm" or not box_area_rule
        rles = None
        if need_rle:
            segs = _column(dets, "segmentation", "detection")
            rles = []
            for d, s in zip(dets, segs):
                im = imgs[d["image_id"]]
                rles.append(_to_rle(s, im.get("height"), im.get("width")))
        if box_area_rule:
            boxes = _boxes(_column(dets, "bbox", "detection"), "detection")
            area = boxes[:, 2] * boxes[:, 3]
        else:
            area = np.array([float(mask_utils.area(r)) for r in rles], dtype=np.float64)
            if self.iou_type == "bbox":
                boxes = _boxes([d["bbox"] if "bbox" in d else mask_utils.toBbox(r)
                                for d, r in zip(dets, rles)], "detection")
        if self.iou_type == "bbox":
            self.det_boxes = boxes
        else:
            self.det_rles = rles
        self.det_area = area.astype(np.float64)


# ------------------------------------------------------------------------------- evaluation
def _evaluate(data, keep, tau, max_dets_per_group, det_unmatched_ignore=None, curves=False):
    """Run matching + accumulation on the detections `keep` (indices into data's arrays)."""
    K = len(data.cat_ids)
    det_img, det_cat = data.det_img[keep], data.det_cat[keep]
    det_group = det_img * K + det_cat
    perm, rank = rank_in_groups(det_group, data.det_score[keep], data.det_order[keep])
    if max_dets_per_group is not None:
        perm, rank = perm[rank < max_dets_per_group], rank[rank < max_dets_per_group]
    sel = keep[perm]
    gt_group = data.gt_img * K + data.gt_cat

    pair_iou = None
    if data.iou_type == "segm":
        det_rles, gt_rles, crowd = data.det_rles, data.gt_rles, data.gt_crowd

        def pair_iou(d_idx, g_idx):
            return np.asarray(mask_utils.iou([det_rles[i] for i in sel[d_idx]],
                                             [gt_rles[j] for j in g_idx],
                                             [int(crowd[j]) for j in g_idx]), dtype=np.float64)

    matched, ignored, iou = match(
        det_group[perm], rank, data.det_area[sel], gt_group, data.gt_area, data.gt_crowd,
        data.gt_ignore, tau,
        det_boxes=data.det_boxes[sel] if data.iou_type == "bbox" else None,
        gt_boxes=data.gt_boxes if data.iou_type == "bbox" else None, pair_iou=pair_iou,
        det_unmatched_ignore=None if det_unmatched_ignore is None else det_unmatched_ignore[sel],
        gt_id_nonzero=data.gt_id_nonzero)

    npig = np.zeros((K, len(AREA_RANGES)), dtype=np.int64)
    for a, (lo, hi) in enumerate(AREA_RANGES):
        ok = ~data.gt_ignore & (data.gt_area >= lo) & (data.gt_area <= hi)
        npig[:, a] = np.bincount(data.gt_cat[ok], minlength=K)
    return accumulate(det_cat[perm], det_img[perm], rank, data.det_score[sel], matched, ignored,
                      iou, npig, tau, curves=curves)


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
    acc, cat_ids = _coco_accumulate(gt, detections, iou_type, tau, max_dets, img_ids)
    return _results(acc, cat_ids)


def lrp_curves(gt, detections, iou_type="bbox", tau=0.5, max_dets=100, img_ids=None):
    """LRP at every score threshold (area "all"), with the bookkeeping of `compute_olrp`.

    Returns:
        {category_id: {"score", "LRP", "TP", "FP", "FN", "loc"}} for the categories with GT and
        detections: float64 arrays over the class's detections in evaluation order (descending
        score); entry n is the prefix ending at detection n, i.e. the score threshold
        `score[n]`. "LRP" is a fraction in [0, 1] (not a percentage); "loc" = sum of 1 - IoU
        over the TPs. Ignored detections occupy a position with unchanged counts.
    """
    acc, cat_ids = _coco_accumulate(gt, detections, iou_type, tau, max_dets, img_ids, True)
    return {cat_ids[k]: v for k, v in acc["curves"].items()}


def _coco_accumulate(gt, detections, iou_type, tau, max_dets, img_ids, curves=False):
    gt = load_gt_dataset(gt)
    dets = _load_detections(detections)
    data = _Data(gt, dets, iou_type, img_ids, lvis=False)
    # COCO.loadRes: `'bbox' in anns[0] and not anns[0]['bbox'] == []`
    box_rule = bool(dets) and "bbox" in dets[0] and len(dets[0]["bbox"]) > 0
    data.detection_geometry(box_rule)
    keep = np.nonzero(data.det_img >= 0)[0]  # detections of images outside `img_ids` are dropped
    return _evaluate(data, keep, tau, max_dets, curves=curves), data.cat_ids


def compute_olrp_lvis(gt, detections, iou_type="bbox", tau=0.5, max_dets=300):
    """Optimal LRP under LVIS's federated rules, equal to the official LRP-Error LVIS evaluation.

    Same arguments and result as `compute_olrp` (with `gt` in LVIS format: images carry
    `neg_category_ids` and `not_exhaustive_category_ids`, categories a `frequency` in r/c/f),
    plus "oLRP_r", "oLRP_c", "oLRP_f": mean oLRP over rare / common / frequent classes. Rules
    (spec §5, `lvis-api`): the `max_dets` top-scoring detections per image over all classes are
    kept (LVISResults); GTs and detections with area <= 0 are dropped (`get_ann_ids`); a
    detection of a class neither annotated in the image nor in its `neg_category_ids` is
    dropped; an unmatched detection of a class in the image's `not_exhaustive_category_ids` is
    ignored (not a false positive); no crowd handling, no per-class maxDets.
    """
    gt = load_gt_dataset(gt)
    for im in gt["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in im:
                raise ValueError(f"LVIS image {im.get('id')} has no '{key}'")
    cats = {c["id"]: c for c in gt["categories"]}
    for c in cats.values():
        if c.get("frequency") not in _FREQUENCIES:
            raise ValueError(f"LVIS category {c['id']} needs a 'frequency' in r/c/f")
    dets = _load_detections(detections)
    data = _Data(gt, dets, iou_type, None, lvis=True)
    data.detection_geometry(bool(dets) and "bbox" in dets[0])
    K = len(data.cat_ids)

    # LVISResults: top `max_dets` per image over all classes (stable by descending score)
    perm, rank = rank_in_groups(data.det_img, data.det_score, data.det_order)
    keep = np.sort(perm[rank < max_dets]) if max_dets is not None and max_dets >= 0 else perm
    # get_ann_ids(area_rng=None) keeps 0 < area < inf only, for GT and detections alike
    keep = keep[(data.det_area[keep] > 0) & (data.det_area[keep] < np.inf)]
    gt_ok = (data.gt_area > 0) & (data.gt_area < np.inf)
    for name in ("gt_img", "gt_cat", "gt_area", "gt_crowd", "gt_ignore", "gt_id_nonzero"):
        setattr(data, name, getattr(data, name)[gt_ok])
    if iou_type == "bbox":
        data.gt_boxes = data.gt_boxes[gt_ok]
    else:
        data.gt_rles = [r for r, ok in zip(data.gt_rles, gt_ok) if ok]

    # federated rule: keep a detection only if its class is positive or negative in the image
    cat_index = {c: i for i, c in enumerate(data.cat_ids)}

    def keys(field):
        out = [i * K + cat_index[c] for i, im in enumerate(data.images) for c in im[field]
               if c in cat_index]
        return np.array(out, dtype=np.int64)

    det_key = data.det_img * K + data.det_cat
    allowed = np.concatenate([keys("neg_category_ids"), data.gt_img * K + data.gt_cat])
    keep = keep[np.isin(det_key[keep], allowed)]
    not_exhaustive = np.isin(det_key, keys("not_exhaustive_category_ids"))

    acc = _evaluate(data, keep, tau, None, det_unmatched_ignore=not_exhaustive)
    res = _results(acc, data.cat_ids)
    for f in _FREQUENCIES:
        idx = [k for k, c in enumerate(data.cat_ids) if cats[c]["frequency"] == f]
        res["oLRP_" + f] = _mean_percent(acc["olrp"][idx, 0])
    return res
