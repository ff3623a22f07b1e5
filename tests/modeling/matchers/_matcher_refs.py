"""Plain reference implementations of the dense-detector matchers, written from the papers (ATSS
Alg. 1, PAA §3.1) and sklearn's EM, with loops over objects: the oracles of the matcher tests and of
``tools/benchmarks/benchmark_paa.py``."""
import math

import numpy as np
import torch


# ---------------------------------------------------------------- ATSS (Alg. 1)
def iou_py(a, b):
    """IoU of two XYXY boxes given as Python float sequences (mmdet: union clamped at 1e-6)."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def atss_reference(anchors_per_level, gt_boxes, topk=9):
    """ATSS, one ground truth at a time. Distances in float32 as the anchors (so that distance
    ties are the same ties); ties at the k-th place -> lower anchor index."""
    levels = [a.float() for a in anchors_per_level]
    anchors = torch.cat(levels).tolist()
    gts = gt_boxes.float().tolist()
    result = [-1] * len(anchors)
    best = [None] * len(anchors)  # (iou, gt index) of the current owner
    for g, gt in enumerate(gts):
        gc = torch.tensor([(gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2], dtype=torch.float32)
        cands, start = [], 0
        for lvl in levels:
            ctr = (lvl[:, :2] + lvl[:, 2:]) / 2
            d = ((ctr[:, 0] - gc[0]) ** 2 + (ctr[:, 1] - gc[1]) ** 2).sqrt().tolist()
            order = sorted(range(len(d)), key=lambda i: (d[i], i))[: min(topk, len(d))]
            cands += [start + i for i in order]
            start += len(d)
        ious = [iou_py(anchors[i], gt) for i in cands]
        if len(ious) < 2:
            continue  # std of one value is undefined (NaN): no positive
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cands, ious):
            a = anchors[i]
            cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01
            if v >= mean + std and inside:
                if best[i] is None or v > best[i][0]:  # equal IoU: the earlier (lower) GT stays
                    best[i] = (v, g)
                    result[i] = g
    return torch.tensor(result, dtype=torch.long)


def grid_anchors(size, stride, sizes, offset=0.0):
    """Square anchors of the given side lengths at every cell of a size×size grid, location-major
    (all anchors of one location adjacent, as Detectron2's anchor generator)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    ctr = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * stride + offset
    half = torch.tensor(sizes, dtype=torch.float32) / 2
    lo, hi = ctr[:, None, :] - half[None, :, None], ctr[:, None, :] + half[None, :, None]
    boxes = torch.cat([lo, hi], dim=2)
    return boxes.reshape(-1, 4)


# ---------------------------------------------------------------- PAA (§3.1)
def gmm_em_reference(x, reg_covar=1e-5, max_iter=100, tol=1e-3):
    """One two-component 1-D GMM fitted by sklearn's EM algorithm (init means (min, max),
    weights ½, variances 1; E-step, M-step, stop when the mean log-likelihood of the E-step changed
    by < tol; final E-step), written plainly with the textbook density.

    Returns (labels, log-densities, number of iterations)."""
    x = np.asarray(x, dtype=np.float64)
    mu = np.array([x.min(), x.max()])
    var = np.ones(2)
    w = np.full(2, 0.5)

    def weighted_log_prob():
        return np.log(w) - 0.5 * (np.log(2 * np.pi) + np.log(var) + (x[:, None] - mu) ** 2 / var)

    bound = -np.inf
    for it in range(1, max_iter + 1):
        wl = weighted_log_prob()
        log_norm = np.logaddexp(wl[:, 0], wl[:, 1])
        new_bound = log_norm.mean()
        resp = np.exp(wl - log_norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
        mu = (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + reg_covar
        w = nk / nk.sum()
        done = abs(new_bound - bound) < tol
        bound = new_bound
        if done:
            break
    wl = weighted_log_prob()
    return np.argmax(wl, 1), np.logaddexp(wl[:, 0], wl[:, 1]), it


def paa_reference(costs, gt_inds, levels, num_gts, topk=9, fit=None):
    """PAA selection, one ground truth at a time (PAA §3.1). ``fit(x) -> (labels,
    log-densities)`` fits the GMM to the ascending costs x (default: :func:`gmm_em_reference`).
    Ties: equal costs -> input order; equal highest log-density of label 0 -> all of that cost."""
    fit = fit or (lambda v: gmm_em_reference(v)[:2])
    costs = costs.double().tolist()
    gt_inds, levels = gt_inds.tolist(), levels.tolist()
    keep = [False] * len(costs)
    for g in range(num_gts):
        cands = []
        for lvl in sorted(set(levels)):
            mine = [i for i in range(len(costs)) if gt_inds[i] == g and levels[i] == lvl]
            cands += sorted(mine, key=lambda i: (costs[i], i))[:topk]
        if len(cands) < 2:
            continue
        cands.sort(key=lambda i: (costs[i], i))
        x = np.array([costs[i] for i in cands])
        labels, dens = fit(x)
        fg = [j for j in range(len(cands)) if labels[j] == 0]
        if not fg:
            continue
        best = max(fg, key=lambda j: (dens[j], -j))  # highest density, first of equals
        for j in fg:
            if x[j] <= x[best]:
                keep[cands[j]] = True
    return torch.tensor(keep, dtype=torch.bool)


def random_paa_case(gen, num_gts, num_levels=5, max_per_level=14, rounding=None):
    """Initial positives of ``num_gts`` GTs: per (GT, level) 0..max_per_level candidates with
    costs from a two-mode mixture (good / bad anchors), in a random order; GT 0 has 1 candidate,
    GT 1 has 2, GT 2 has all costs equal, GT 3 has none (when num_gts > 3)."""
    costs, gts, lvls = [], [], []
    for g in range(num_gts):
        for lvl in range(num_levels):
            n = int(torch.randint(0, max_per_level + 1, (1,), generator=gen))
            if g < 4:
                n = {0: int(lvl == 2), 1: int(lvl in (1, 3)), 2: 3, 3: 0}[g]
            good = torch.rand((n,), generator=gen) < 0.4
            c = torch.where(good, 0.3 + 0.3 * torch.rand((n,), generator=gen),
                            1.0 + 1.5 * torch.rand((n,), generator=gen))
            if g == 2:
                c = torch.full((n,), 0.75)
            costs.append(c)
            gts += [g] * n
            lvls += [lvl] * n
    costs = torch.cat(costs)
    if rounding:
        costs = (costs / rounding).round() * rounding  # exact ties
    perm = torch.randperm(len(costs), generator=gen)
    return costs[perm].float(), torch.tensor(gts)[perm], torch.tensor(lvls)[perm]


# ---------------------------------------------------------------- score voting (PAA §3.4)
def score_voting_reference(det_boxes, det_labels, cand_boxes, cand_scores, score_thr=0.05,
                           sigma=0.025):
    """Per-detection loop, in float64: neighbours = candidates of the detection's class with
    score > score_thr and IoU > 0.01; voted box = Σ p b / Σ p, p = exp(−(1 − IoU)²/σ)·score."""
    out = []
    cands = cand_boxes.double().tolist()
    for box, label in zip(det_boxes.double().tolist(), det_labels.tolist()):
        num, den = [0.0] * 4, 0.0
        for i, cb in enumerate(cands):
            s = float(cand_scores[i, label])
            iou = iou_py(box, cb)
            if s > score_thr and iou > 0.01:
                p = math.exp(-((1 - iou) ** 2) / sigma) * s
                num = [n + p * c for n, c in zip(num, cb)]
                den += p
        out.append([n / den for n in num] if den > 0 else box)
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)
