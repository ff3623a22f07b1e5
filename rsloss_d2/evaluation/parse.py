"""Parsing of COCO / LVIS ground truth and results into flat arrays, and the one matching that
AP (`ap.py`), Optimal LRP (`olrp.py`) and ranking quality (`ranking.py`) share.

`prepare_coco` / `prepare_lvis` apply the rules of pycocotools' `COCO.loadRes` + `COCOeval` /
lvis-api's `LVISResults` + `LVISEval` (which detections take part, their areas, the federated
LVIS rules); `match_data` runs `olrp_core.match` on them at the requested IoU thresholds for the
four COCO area ranges and returns a `Matching`.
"""
import json
import os
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter

import numpy as np
import pycocotools.mask as mask_utils

from .olrp_core import AREA_RANGES, match, rank_in_groups

__all__ = ["load_gt_dataset", "prepare_coco", "prepare_lvis", "match_data", "Matching"]

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
        return list(map(itemgetter(key), dicts))
    except KeyError:
        bad = next(i for i, d in enumerate(dicts) if key not in d)
        raise ValueError(f"{what} #{bad} has no '{key}': {dicts[bad]}") from None
    except TypeError:
        raise TypeError(f"{what}s must be dicts") from None


def _boxes(values, what):
    try:
        four = set(map(len, values)) <= {4}
    except TypeError:
        four = False
    if not four:
        raise ValueError(f"{what} 'bbox' entries must be [x, y, w, h]")
    flat = np.fromiter(chain.from_iterable(values), dtype=np.float64, count=4 * len(values))
    return flat.reshape(len(values), 4)


def _to_rle(segm, height, width):
    """RLE of a polygon list, an uncompressed RLE or a compressed RLE (as `COCO.annToRLE`)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _lookup(values, mapping):
    """int64 positions of `values` in `mapping` (a dict id -> index), -1 for unknown ids;
    vectorised for integer ids."""
    arr = np.asarray(values)
    if len(values) and arr.dtype.kind in "iu" and arr.ndim == 1 and mapping and all(
            isinstance(k, int) and not isinstance(k, bool) for k in mapping):
        keys = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
        idx = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
        o = np.argsort(keys)
        keys, idx = keys[o], idx[o]
        pos = np.minimum(np.searchsorted(keys, arr), len(keys) - 1)
        return np.where(keys[pos] == arr, idx[pos], -1)
    return np.fromiter((mapping.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _index_of(values, mapping, what, kind):
    """Positions of `values` in `mapping` (a dict id -> index); unknown ids raise."""
    out = _lookup(values, mapping)
    if (out < 0).any():
        vals = values.tolist() if isinstance(values, np.ndarray) else values
        bad = sorted({vals[i] for i in np.nonzero(out < 0)[0]}, key=str)
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
        raw_img = np.asarray(_column(dets, "image_id", "detection"))
        raw_cat = np.asarray(_column(dets, "category_id", "detection"))
        _index_of(raw_img, {i: 0 for i in all_img_ids}, "detections", "image")
        self.det_cat = _index_of(raw_cat, cat_index, "detections", "category")
        self.det_img = _lookup(raw_img, img_index)
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


# ------------------------------------------------------------------------------- preparation
def prepare_coco(gt, detections, iou_type="bbox", img_ids=None):
    """COCO rules: returns `(data, keep)` with `keep` the detections of the evaluated images.

    The area of a detection follows `COCO.loadRes`: the box area when the first result has a
    non-empty `bbox`, else the mask area (Detectron2 drops `bbox` from mask results for that
    reason). GT `ignore` = `iscrowd` (as `COCOeval._prepare`)."""
    gt = load_gt_dataset(gt)
    dets = _load_detections(detections)
    data = _Data(gt, dets, iou_type, img_ids, lvis=False)
    # COCO.loadRes: `'bbox' in anns[0] and not anns[0]['bbox'] == []`
    box_rule = bool(dets) and "bbox" in dets[0] and len(dets[0]["bbox"]) > 0
    data.detection_geometry(box_rule)
    keep = np.nonzero(data.det_img >= 0)[0]  # detections of images outside `img_ids` are dropped
    return data, keep


def prepare_lvis(gt, detections, iou_type="bbox", max_dets=300):
    """LVIS rules: returns `(data, keep, not_exhaustive, frequency)`.

    The `max_dets` top-scoring detections per image over all classes are kept (LVISResults,
    stable for equal scores); their area is the box area when the first result has a `bbox`
    (also for masks, as LVISResults), else the mask area; GTs and detections with area <= 0 are
    dropped (`get_ann_ids`); a detection of a class neither annotated in the image nor in its
    `neg_category_ids` is dropped; `not_exhaustive` (bool (D,)) flags the detections whose class
    is in the image's `not_exhaustive_category_ids` (unmatched ones are not false positives). No
    crowd handling (a GT's `ignore` is honoured), no per-class maxDets. `frequency`: the r/c/f
    letter of each category, in `data.cat_ids` order."""
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
    frequency = [cats[c]["frequency"] for c in data.cat_ids]
    return data, keep, not_exhaustive, frequency


# ---------------------------------------------------------------------------------- matching
@dataclass
class Matching:
    """The matching of the detections that take part, in one flat order (D of them).

    det_cat, det_img: int64 (D,) category / image index; det_rank: int64 (D,) rank in its
    (image, category) group; det_score: float64 (D,); matched, ignored: bool (T, A, D) at each
    IoU threshold and area range (a true positive is matched & ~ignored); iou: float64 (A, D)
    IoU of the match at threshold `iou_index`; npig: int64 (K, A) non-ignored GTs per category
    and area range."""

    det_cat: np.ndarray
    det_img: np.ndarray
    det_rank: np.ndarray
    det_score: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    iou: np.ndarray
    npig: np.ndarray


def match_data(data, keep, taus, max_dets_per_group=None, det_unmatched_ignore=None,
               iou_index=0):
    """Match the detections `keep` (indices into data's arrays) at the IoU thresholds `taus`,
    keeping at most `max_dets_per_group` per (image, category) (COCO's maxDets)."""
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
        data.gt_ignore, taus,
        det_boxes=data.det_boxes[sel] if data.iou_type == "bbox" else None,
        gt_boxes=data.gt_boxes if data.iou_type == "bbox" else None, pair_iou=pair_iou,
        det_unmatched_ignore=None if det_unmatched_ignore is None else det_unmatched_ignore[sel],
        gt_id_nonzero=data.gt_id_nonzero, iou_index=iou_index)

    npig = np.zeros((K, len(AREA_RANGES)), dtype=np.int64)
    for a, (lo, hi) in enumerate(AREA_RANGES):
        ok = ~data.gt_ignore & (data.gt_area >= lo) & (data.gt_area <= hi)
        npig[:, a] = np.bincount(data.gt_cat[ok], minlength=K)
    return Matching(det_cat[perm], det_img[perm], rank, data.det_score[sel], matched, ignored,
                    iou, npig)
