"""Vectorised core of the COCO / LVIS evaluation: the greedy COCO matching at several IoU
thresholds and area ranges at once, and the LRP accumulation of the official LRP-Error code (its
patched `cocoeval.py`).

Everything here works on flat NumPy arrays; parsing COCO / LVIS json and the federated LVIS
filtering live in `olrp.py`, AP in `ap.py`, ranking quality in `ranking.py`. Conventions:

* images and categories are given as indices (positions in the sorted id lists);
* detections and ground truths come in their original (json) order, which decides ties;
* `T` IoU thresholds and `A` area ranges are processed together: they differ only in the
  threshold and in which GTs / unmatched detections are ignored, so the IoUs are computed once
  and the greedy matching runs once for all (leading axes of sizes `T` and `A`).

Matching (identical to `COCOeval.evaluateImg` and `LVISEval.evaluate_img`): within an (image,
category) group the detections are visited in descending score (stable) order; each takes, among
the GTs not yet taken (crowd GTs can be taken repeatedly) with IoU >= tau, the non-ignored GT with
the highest IoU, and only if there is none the ignored GT with the highest IoU; equal IoUs go to
the GT that comes last in the group's order. The loop below runs over the rank of the detections
that overlap some GT by the lowest threshold (the others never match and take nothing) and
processes all groups at once, because only detections of the same group interact.
"""
import numpy as np

__all__ = ["AREA_RANGES", "AREA_NAMES", "bbox_iou_pairs", "rank_in_groups", "match", "accumulate"]

# COCO / LVIS area ranges (inclusive bounds, in pixels^2): all, small, medium, large.
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
AREA_NAMES = ("all", "small", "medium", "large")


def bbox_iou_pairs(det_boxes, gt_boxes, gt_crowd):
    """IoU of boxes in COCO's xywh format, with pycocotools' exact floating-point operations.

    Args:
        det_boxes: float64 (..., 4) detection boxes (x, y, w, h).
        gt_boxes: float64 (..., 4) GT boxes, broadcastable against `det_boxes`.
        gt_crowd: bool (...), crowd GTs use intersection / detection area (the crowd rule).
    Returns:
        float64 (...) IoU; 0 where the boxes do not overlap.
    """
    dx, dy, dw, dh = np.moveaxis(det_boxes, -1, 0)
    gx, gy, gw, gh = np.moveaxis(gt_boxes, -1, 0)
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def rank_in_groups(group, score, order):
    """Sort items by (group, descending score, original order) and rank them within their group.

    Args:
        group: int64 (N,) group key; score: float64 (N,); order: int64 (N,) tie breaker.
    Returns:
        perm: int64 (N,) the sorting permutation; rank: int64 (N,) rank of item `perm[i]`.
    """
    perm = np.lexsort((order, -score, group))
    return perm, _ranks_of_sorted(group[perm])


def _ranks_of_sorted(g):
    """Position of each item within its run of equal keys in the sorted int64 array `g`."""
    n = len(g)
    new = np.ones(n, dtype=bool)
    new[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    return np.arange(n) - start


def _buckets(counts):
    """Padded width (next power of two) of each group with `counts` GTs."""
    return 1 << np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)


def match(det_group, det_rank, det_area, gt_group, gt_area, gt_crowd, gt_ignore, taus,
          area_ranges=AREA_RANGES, det_boxes=None, gt_boxes=None, pair_iou=None,
          det_unmatched_ignore=None, gt_id_nonzero=None, iou_index=0):
    """Greedy COCO matching at the IoU thresholds `taus` for all groups and area ranges at once.

    Args:
        det_group: int64 (D,) (image, category) group key of each detection.
        det_rank: int64 (D,) rank of the detection in its group (0 = highest score; ties by
            original order). Ranks in a group must be distinct.
        det_area: float64 (D,) detection area (decides the area-range ignore of unmatched ones).
        gt_group: int64 (G,) group key of each GT, GTs in their original order.
        gt_area: float64 (G,); gt_crowd, gt_ignore: bool (G,) (`ignore` includes crowd).
        taus: float (T,) IoU thresholds (COCO uses min(tau, 1 - 1e-10)); a scalar is one.
        det_boxes, gt_boxes: float64 (D, 4) / (G, 4) xywh boxes for box IoU, or
        pair_iou: callable(det_idx (n,), gt_idx (n_gt,)) -> (n, n_gt) IoU of one group's
            detections and GTs (used for masks), called once per group with both.
        det_unmatched_ignore: optional bool (D,), unmatched detections flagged here are ignored
            in every area range (LVIS `not_exhaustive_category_ids`).
        gt_id_nonzero: optional bool (G,); COCO stores the matched GT's id and later tests it for
            truth, so a match to a GT with id 0 counts as unmatched (reproduced for exactness).
        iou_index: the threshold whose match IoUs are returned.
    Returns:
        matched: bool (T, A, D) matched and counted as a match (see `gt_id_nonzero`);
        ignored: bool (T, A, D) neither TP nor FP;
        iou: float64 (A, D) IoU of the match at `taus[iou_index]` (0 where not counted).
    """
    taus = np.atleast_1d(np.asarray(taus, dtype=np.float64))
    D, G, A, T = len(det_group), len(gt_group), len(area_ranges), len(taus)
    thr = np.minimum(taus, 1 - 1e-10)[:, None, None, None]  # (T, 1, 1, 1)
    lo = np.array([a[0] for a in area_ranges], dtype=np.float64)[:, None]
    hi = np.array([a[1] for a in area_ranges], dtype=np.float64)[:, None]
    gt_ign = gt_ignore[None, :] | (gt_area[None, :] < lo) | (gt_area[None, :] > hi)  # (A, G)
    gt_reusable = gt_crowd.astype(bool)
    gt_taken = np.zeros((T, A, G), dtype=bool)
    matched = np.zeros((T, A, D), dtype=bool)
    ign_by_gt = np.zeros((T, A, D), dtype=bool)
    iou_out = np.zeros((A, D))

    if D and G:
        gperm = np.argsort(gt_group, kind="stable")
        ug, ustart, ucount = np.unique(gt_group[gperm], return_index=True, return_counts=True)
        pos = np.minimum(np.searchsorted(ug, det_group), len(ug) - 1)
        has_gt = ug[pos] == det_group
        width = _buckets(ucount)
        for w in np.unique(width):
            grp = np.nonzero(width == w)[0]  # groups (indices into ug) of this bucket
            local = np.full(len(ug), -1, dtype=np.int64)
            local[grp] = np.arange(len(grp))
            slots = ustart[grp][:, None] + np.arange(w)[None, :]
            valid = np.arange(w)[None, :] < ucount[grp][:, None]
            gslot = np.where(valid, gperm[np.minimum(slots, G - 1)], -1)  # (n_grp, w)
            dets = np.nonzero(has_gt & (local[pos] >= 0))[0]
            if len(dets) == 0:
                continue
            dslot = gslot[local[pos[dets]]]  # (n, w) GT index per slot, -1 = padding
            gidx = np.maximum(dslot, 0)
            if pair_iou is None:
                ious = bbox_iou_pairs(det_boxes[dets][:, None, :], gt_boxes[gidx], gt_crowd[gidx])
            else:
                ious = np.zeros(dslot.shape)
                dgrp = local[pos[dets]]
                byg = np.argsort(dgrp, kind="stable")
                cuts = np.flatnonzero(np.diff(dgrp[byg])) + 1
                for rows in np.split(byg, cuts):
                    g_of = dslot[rows[0]]
                    g_of = g_of[g_of >= 0]
                    ious[rows, : len(g_of)] = pair_iou(dets[rows], g_of)
            ious = np.where(dslot >= 0, ious, -1.0)
            # only detections with some IoU >= the lowest threshold can match or take a GT: the
            # others are unmatched everywhere and leave the greedy order of the rest unchanged
            active = ious.max(axis=1) >= thr.min()
            dets, ious, gidx = dets[active], ious[active], gidx[active]
            if len(dets) == 0:
                continue
            order = np.lexsort((det_rank[dets], det_group[dets]))
            arank = np.empty(len(dets), dtype=np.int64)
            arank[order] = _ranks_of_sorted(det_group[dets][order])
            byrank = np.argsort(arank, kind="stable")
            bounds = np.searchsorted(arank[byrank], np.arange(arank.max() + 2))
            for r in range(arank.max() + 1):
                sel = byrank[bounds[r]:bounds[r + 1]]  # one detection per group
                row = ious[sel]  # (m, w)
                gi = gidx[sel]
                ign = gt_ign[:, gi]  # (A, m, w)
                free = ~gt_taken[:, :, gi] | gt_reusable[gi]  # (T, A, m, w)
                cand = free & (row >= thr)
                cand_reg = cand & ~ign
                use = np.where(cand_reg.any(-1, keepdims=True), cand_reg, cand)
                val = np.where(use, row, -np.inf)
                j = w - 1 - np.argmax(val[..., ::-1], axis=-1)  # last maximum = COCO's tie rule
                t_idx, a_idx, m_idx = np.nonzero(use.any(-1))
                jj = j[t_idx, a_idx, m_idx]
                g_hit = gi[m_idx, jj]
                d_hit = dets[sel[m_idx]]
                counted = (gt_id_nonzero[g_hit] if gt_id_nonzero is not None
                           else np.ones(len(g_hit), dtype=bool))
                gt_taken[t_idx, a_idx, g_hit] = True
                matched[t_idx, a_idx, d_hit] = counted
                ign_by_gt[t_idx, a_idx, d_hit] = ign[a_idx, m_idx, jj]
                at = t_idx == iou_index
                iou_out[a_idx[at], d_hit[at]] = np.where(counted[at], row[m_idx[at], jj[at]], 0.0)

    unmatched_ign = (det_area[None, :] < lo) | (det_area[None, :] > hi)  # (A, D)
    if det_unmatched_ignore is not None:
        unmatched_ign = unmatched_ign | det_unmatched_ignore[None, :]
    ignored = ign_by_gt | (~matched & unmatched_ign[None])
    return matched, ignored, iou_out


def accumulate(det_cat, det_img, det_rank, det_score, matched, ignored, iou, npig, tau,
               curves=False):
    """LRP-optimal values per category and area range (the official `accumulate()`).

    Args:
        det_cat, det_img, det_rank: int64 (D,) category index, image index (position in the
            sorted image ids) and rank within the (image, category) group of the detections
            that take part (already cut to max_dets per group).
        det_score: float64 (D,).
        matched, ignored: bool (A, D); iou: float64 (A, D) (outputs of `match`).
        npig: int64 (K, A) number of non-ignored GTs per category and area range.
        tau: the IoU threshold (LRP normalises the localisation error by 1 - tau).
        curves: also return, under "curves", {k: {"score", "LRP", "TP", "FP", "FN", "loc"}}: the
            per-prefix arrays of area range 0 for each category k with GT there.
    Returns:
        dict of float64 (K, A) arrays "olrp", "loc", "fp", "fn", "thr": -1 where the category
        has no non-ignored GT in that range, NaN for the components that are undefined.
    """
    K, A = npig.shape
    out = {k: np.full((K, A), -1.0) for k in ("olrp", "loc", "fp", "fn", "thr")}
    out["curves"] = {}
    order = np.lexsort((det_rank, det_img, -det_score, det_cat))
    cats = det_cat[order]
    bounds = np.searchsorted(cats, np.arange(K + 1))
    tp_all = matched & ~ignored
    fp_all = ~matched & ~ignored
    for k in range(K):
        areas = np.nonzero(npig[k] > 0)[0]
        if len(areas) == 0:
            continue
        idx = order[bounds[k]:bounds[k + 1]]
        n_gt = npig[k, areas].astype(np.float64)[:, None]
        if len(idx):
            tps = tp_all[np.ix_(areas, idx)]
            fps = fp_all[np.ix_(areas, idx)]
            tp = np.cumsum(tps, axis=1).astype(np.float64)
            fp = np.cumsum(fps, axis=1).astype(np.float64)
            loc = tp - np.cumsum(iou[np.ix_(areas, idx)] * tps, axis=1)
            fn = n_gt - tp
            lrp = (loc / (1 - tau) + fp + fn) / (tp + fp + fn)
            if curves and areas[0] == 0:
                out["curves"][k] = {"score": det_score[idx], "LRP": lrp[0], "TP": tp[0],
                                    "FP": fp[0], "FN": fn[0], "loc": loc[0]}
        for i, a in enumerate(areas):
            if len(idx) == 0 or tp[i, -1] == 0:
                vals = (1.0, np.nan, np.nan, 1.0, np.nan)
            else:
                n = int(np.argmin(lrp[i]))
                with np.errstate(divide="ignore", invalid="ignore"):
                    vals = (lrp[i, n], loc[i, n] / tp[i, n], fp[i, n] / (tp[i, n] + fp[i, n]),
                            fn[i, n] / n_gt[i, 0], det_score[idx[n]])
            for key, v in zip(("olrp", "loc", "fp", "fn", "thr"), vals):
                out[key][k, a] = v
    return out
