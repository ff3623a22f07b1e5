"""Vectorised core of the Optimal LRP evaluation: COCO-style matching at one IoU threshold and the
LRP accumulation of the official LRP-Error code (spec `olrp.md` §2, §4).

Everything here works on flat NumPy arrays; parsing COCO / LVIS json and the federated LVIS
filtering live in `olrp.py`. Conventions:

* images and categories are given as indices (positions in the sorted id lists);
* detections and ground truths come in their original (json) order, which decides ties;
* `A` area ranges are processed together: they differ only in which GTs / unmatched detections
  are ignored, so the IoUs are computed once and the greedy matching runs once for all ranges
  (an extra leading axis of size `A`).

Matching (identical to `COCOeval.evaluateImg` at one threshold): within an (image, category)
group the detections are visited in descending score (stable) order; each takes, among the GTs
not yet taken (crowd GTs can be taken repeatedly) with IoU >= tau, the non-ignored GT with the
highest IoU, and only if there is none the ignored GT with the highest IoU; equal IoUs go to the
GT that comes last in the group's order. The loop below runs over the detection rank
(0 .. max_dets - 1) and processes all groups at once, because only detections of the same group
interact.
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
    g = group[perm]
    n = len(g)
    new = np.ones(n, dtype=bool)
    new[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    return perm, np.arange(n) - start


def _buckets(counts):
    """Padded width (next power of two) of each group with `counts` GTs."""
    return 1 << np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)


def match(det_group, det_rank, det_area, gt_group, gt_area, gt_crowd, gt_ignore, tau,
          area_ranges=AREA_RANGES, det_boxes=None, gt_boxes=None, pair_iou=None,
          det_unmatched_ignore=None, gt_id_nonzero=None):
    """Greedy COCO matching at IoU threshold `tau` for all groups and area ranges at once.

    Args:
        det_group: int64 (D,) (image, category) group key of each detection.
        det_rank: int64 (D,) rank of the detection in its group (0 = highest score; ties by
            original order). Ranks in a group must be 0..n-1.
        det_area: float64 (D,) detection area (decides the area-range ignore of unmatched ones).
        gt_group: int64 (G,) group key of each GT, GTs in their original order.
        gt_area: float64 (G,); gt_crowd, gt_ignore: bool (G,) (`ignore` includes crowd).
        tau: IoU threshold (COCO uses min(tau, 1 - 1e-10)).
        det_boxes, gt_boxes: float64 (D, 4) / (G, 4) xywh boxes for box IoU, or
        pair_iou: callable(det_idx (n,), gt_idx (n_gt,)) -> (n, n_gt) IoU of one group's
            detections and GTs (used for masks), called once per group with both.
        det_unmatched_ignore: optional bool (D,), unmatched detections flagged here are ignored
            in every area range (LVIS `not_exhaustive_category_ids`).
        gt_id_nonzero: optional bool (G,); COCO stores the matched GT's id and later tests it for
            truth, so a match to a GT with id 0 counts as unmatched (reproduced for exactness).
    Returns:
        matched: bool (A, D) matched and counted as a match (see `gt_id_nonzero`);
        ignored: bool (A, D) neither TP nor FP; iou: float64 (A, D) IoU of the match (0 if none).
    """
    D, G, A = len(det_group), len(gt_group), len(area_ranges)
    thr = min(tau, 1 - 1e-10)
    lo = np.array([a[0] for a in area_ranges])[:, None]
    hi = np.array([a[1] for a in area_ranges])[:, None]
    gt_ign = gt_ignore[None, :] | (gt_area[None, :] < lo) | (gt_area[None, :] > hi)  # (A, G)
    gt_reusable = gt_crowd.astype(bool)
    gt_taken = np.zeros((A, G), dtype=bool)
    matched = np.zeros((A, D), dtype=bool)
    ign_by_gt = np.zeros((A, D), dtype=bool)
    iou_out = np.zeros((A, D))
    match_gt = np.full((A, D), -1, dtype=np.int64)

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
            dvalid = dslot >= 0
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
            ious = np.where(dvalid, ious, -1.0)
            byrank = np.argsort(det_rank[dets], kind="stable")
            ranks = det_rank[dets][byrank]
            bounds = np.searchsorted(ranks, np.arange(ranks[-1] + 2))
            for r in range(ranks[-1] + 1):
                sel = byrank[bounds[r]:bounds[r + 1]]  # one detection per group
                if len(sel) == 0:
                    continue
                row = ious[sel]  # (m, w)
                gi = gidx[sel]
                ign = gt_ign[:, gi]  # (A, m, w)
                free = ~gt_taken[:, gi] | gt_reusable[gi]
                cand = free & (dvalid[sel] & (row >= thr))[None]
                cand_reg = cand & ~ign
                use = np.where(cand_reg.any(-1, keepdims=True), cand_reg, cand)
                val = np.where(use, row[None], -np.inf)
                j = w - 1 - np.argmax(val[..., ::-1], axis=-1)  # last maximum = COCO's tie rule
                hit = use.any(-1)  # (A, m)
                a_idx, m_idx = np.nonzero(hit)
                jj = j[a_idx, m_idx]
                g_hit = gi[m_idx, jj]
                d_hit = dets[sel[m_idx]]
                gt_taken[a_idx, g_hit] = True
                matched[a_idx, d_hit] = True
                iou_out[a_idx, d_hit] = row[m_idx, jj]
                ign_by_gt[a_idx, d_hit] = ign[a_idx, m_idx, jj]
                match_gt[a_idx, d_hit] = g_hit

    counted = matched
    if gt_id_nonzero is not None and G:
        counted = matched & gt_id_nonzero[np.maximum(match_gt, 0)]
    unmatched_ign = (det_area[None, :] < lo) | (det_area[None, :] > hi)
    if det_unmatched_ignore is not None:
        unmatched_ign = unmatched_ign | det_unmatched_ignore[None, :]
    ignored = (matched & ign_by_gt) | (~counted & unmatched_ign)
    return counted, ignored, np.where(counted, iou_out, 0.0)


def accumulate(det_cat, det_img, det_rank, det_score, matched, ignored, iou, npig, tau,
               curves=False):
    """LRP-optimal values per category and area range (spec §2, `accumulate()` step 1-7).

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
