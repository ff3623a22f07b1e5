#!/usr/bin/env python
"""Benchmark the batched PAA re-assignment and ATSS assignment against the official per-object
loops, on the same COCO-size batch, and check that they select the same anchors.

PAA (``rsloss_d2.modeling.matchers.paa_reassign``, one batched EM over all ground truths) vs the
official ``paa_reassign`` loop of RS-PAA / mmdet: for every ground truth, per-level ``topk`` in
torch, a sort, one ``sklearn.mixture.GaussianMixture`` fit + ``predict`` + ``score_samples`` on the
float32 costs (the official call), and the Fig. 3(c) selection. Without scikit-learn installed the
loop uses a per-object NumPy EM of sklearn's algorithm instead (``loop`` column says which).

Batch: ``--images`` images × ``--objects`` ground truths; each ground truth has initial positives
(MaxIoU ≥ 0.1) on all ``--levels`` levels, many on its "home" level, fewer on the neighbours, few
elsewhere, so up to ``topk`` (9) per level enter the fit (≤ 45 per object). Costs (focal + GIoU)
from two modes: good anchors U(0.3, 0.9), poor ones U(0.9, 2.5).

ATSS (``atss_match_batch``, all images and objects at once) vs mmdet's ``ATSSAssigner`` run per
image (full (A, G) IoU matrix, per-level ``topk``, the per-object index loop), on RS-ATSS anchors
(3 per location, scale 4, strides 8–128) of ``--size`` images. The official result at distance
ties depends on ``torch.topk``; the number of differing anchors is printed.

Score voting (``score_voting``, one tensor computation per image) vs the official loop over
classes and detections (mmdet ``PAAHead.score_voting``), on 100 detections and 5000 candidates of
80 classes per image (``--images`` images, one call per image in both).

Times: median of ``--repeats`` runs after a warm-up (the loops: one run), milliseconds.

Usage::

    python tools/benchmarks/benchmark_paa.py [--images 16] [--objects 50] [--repeats 5] [--threads 1]
                                  [--size 800x1333] [--skip-atss] [--skip-voting] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable, List, Tuple

import numpy as np
import torch

from rsloss_d2.modeling.matchers import atss_match_batch, paa_reassign, score_voting
from rsloss_d2.modeling.matchers._overlaps import pairwise_iou_mmdet

try:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
except ImportError:  # the loop then uses the NumPy EM below
    GaussianMixture = None


# ------------------------------------------------------------------------------------ PAA
def make_paa_batch(gen: torch.Generator, images: int, objects: int, levels: int, device):
    """Initial positives of images × objects ground truths: (costs, gt_inds, levels)."""
    g = images * objects
    home = torch.randint(0, levels, (g,), generator=gen)
    dist = (torch.arange(levels)[None, :] - home[:, None]).abs()  # (G, L)
    high = torch.tensor([40, 15, 4, 2, 2])[dist.clamp(max=4)]
    counts = (torch.rand((g, levels), generator=gen) * (high + 1)).long()  # 0 .. high
    gt_inds = torch.arange(g).repeat_interleave(counts.sum(1))
    lvls = torch.arange(levels).repeat(g).repeat_interleave(counts.reshape(-1))
    n = len(gt_inds)
    good = torch.rand(n, generator=gen) < 0.35
    costs = torch.where(good, 0.3 + 0.6 * torch.rand(n, generator=gen),
                        0.9 + 1.6 * torch.rand(n, generator=gen))
    perm = torch.randperm(n, generator=gen)  # anchors of all objects interleaved
    return costs[perm].to(device), gt_inds[perm].to(device), lvls[perm].to(device)


def _numpy_gmm(x: np.ndarray, reg_covar: float) -> Tuple[np.ndarray, np.ndarray]:
    """sklearn's EM for GaussianMixture(2, 'diag', means_init=[min, max], weights ½, precisions 1)
    on one object's 1-D costs: (predict, score_samples)."""
    x = x.astype(np.float64).reshape(-1)
    mu, var, w = np.array([x.min(), x.max()]), np.ones(2), np.full(2, 0.5)

    def wlp():
        return np.log(w) - 0.5 * (np.log(2 * np.pi) + np.log(var) + (x[:, None] - mu) ** 2 / var)

    bound = -np.inf
    for _ in range(100):
        wl = wlp()
        norm = np.logaddexp(wl[:, 0], wl[:, 1])
        resp = np.exp(wl - norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
        mu = (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + reg_covar
        w = nk / nk.sum()
        done, bound = abs(norm.mean() - bound) < 1e-3, norm.mean()
        if done:
            break
    wl = wlp()
    return wl.argmax(1), np.logaddexp(wl[:, 0], wl[:, 1])


def _sklearn_gmm(x: np.ndarray, reg_covar: float) -> Tuple[np.ndarray, np.ndarray]:
    gmm = GaussianMixture(2, weights_init=np.array([0.5, 0.5]),
                          means_init=np.array([x.min(), x.max()]).reshape(2, 1),
                          precisions_init=np.array([1.0, 1.0]).reshape(2, 1),
                          covariance_type="diag", reg_covar=reg_covar)
    gmm.fit(x)
    return gmm.predict(x), gmm.score_samples(x)


def paa_official_loop(costs, gt_inds, levels, num_gts, topk=9, reg_covar=1e-5):
    """RS-PAA's ``paa_reassign`` loop (one GMM fit per ground truth) -> (M,) bool kept."""
    fit = _sklearn_gmm if GaussianMixture is not None else _numpy_gmm
    num_levels = int(levels.max()) + 1
    pos_inds = torch.arange(len(costs), device=costs.device)
    keep = torch.zeros(len(costs), dtype=torch.bool, device=costs.device)
    for gt in range(num_gts):
        gt_mask = gt_inds == gt
        inds, vals = [], []
        for level in range(num_levels):
            m = gt_mask & (levels == level)
            value, idx = costs[m].topk(min(int(m.sum()), topk), largest=False)
            inds.append(pos_inds[m][idx])
            vals.append(value)
        inds, vals = torch.cat(inds), torch.cat(vals)
        if len(inds) < 2:
            continue
        vals, order = vals.sort()
        inds = inds[order]
        x = vals.view(-1, 1).cpu().numpy()
        labels, scores = fit(x, reg_covar)
        labels = torch.from_numpy(labels).to(costs.device)
        scores = torch.from_numpy(scores).to(costs.device)
        fgs = labels == 0
        if fgs.nonzero().numel():
            _, thr = scores[fgs].topk(1)
            keep[inds[fgs][: int(thr) + 1]] = True
    return keep


# ----------------------------------------------------------------------------------- ATSS
def rs_atss_anchors(height: int, width: int, device) -> List[torch.Tensor]:
    """RS-ATSS anchors: strides 8..128, sides 4·2^(i/3)·stride, centres on the grid points."""
    out = []
    for stride in (8, 16, 32, 64, 128):
        h, w = -(-height // stride), -(-width // stride)
        ys, xs = torch.meshgrid(torch.arange(h, device=device) * float(stride),
                                torch.arange(w, device=device) * float(stride), indexing="ij")
        ctr = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        half = torch.tensor([4 * 2 ** (i / 3) * stride / 2 for i in range(3)], device=device)
        lo, hi = ctr[:, None] - half[None, :, None], ctr[:, None] + half[None, :, None]
        out.append(torch.cat([lo, hi], 2).reshape(-1, 4))
    return out


def make_gts(gen, images, objects, height, width, device) -> List[torch.Tensor]:
    """COCO-like boxes: log-uniform sizes 8..600 px, aspect 1/3..3, inside the image."""
    gts = []
    for _ in range(images):
        side = torch.exp(torch.empty(objects).uniform_(np.log(8), np.log(600), generator=gen))
        ar = torch.exp(torch.empty(objects).uniform_(np.log(1 / 3), np.log(3), generator=gen))
        w, h = (side * ar.sqrt()).clamp(max=width - 1), (side / ar.sqrt()).clamp(max=height - 1)
        x1 = torch.rand(objects, generator=gen) * (width - w)
        y1 = torch.rand(objects, generator=gen) * (height - h)
        gts.append(torch.stack([x1, y1, x1 + w, y1 + h], 1).to(device))
    return gts


def atss_official(anchors_per_level: List[torch.Tensor], gt: torch.Tensor, topk=9):
    """mmdet 2.8 ``ATSSAssigner.assign`` (its structure and loops) for one image -> (A,) long."""
    bboxes = torch.cat(anchors_per_level)
    num_gt, num_bboxes = gt.size(0), bboxes.size(0)
    area1 = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
    area2 = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    lt = torch.max(bboxes[:, None, :2], gt[None, :, :2])
    rb = torch.min(bboxes[:, None, 2:], gt[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    overlaps = overlap / (area1[:, None] + area2[None, :] - overlap).clamp(min=1e-6)
    assigned = overlaps.new_full((num_bboxes,), 0, dtype=torch.long)
    gt_points = torch.stack(((gt[:, 0] + gt[:, 2]) / 2.0, (gt[:, 1] + gt[:, 3]) / 2.0), dim=1)
    bx, by = (bboxes[:, 0] + bboxes[:, 2]) / 2.0, (bboxes[:, 1] + bboxes[:, 3]) / 2.0
    distances = (torch.stack((bx, by), 1)[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidate_idxs, start = [], 0
    for n in [len(a) for a in anchors_per_level]:
        _, idx = distances[start:start + n].topk(min(topk, n), dim=0, largest=False)
        candidate_idxs.append(idx + start)
        start += n
    candidate_idxs = torch.cat(candidate_idxs, dim=0)
    cand_ov = overlaps[candidate_idxs, torch.arange(num_gt)]
    is_pos = cand_ov >= (cand_ov.mean(0) + cand_ov.std(0))[None, :]
    for gt_idx in range(num_gt):  # the official per-object loop
        candidate_idxs[:, gt_idx] += gt_idx * num_bboxes
    ep_x = bx.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    ep_y = by.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    candidate_idxs = candidate_idxs.view(-1)
    cx, cy = ep_x[candidate_idxs].view(-1, num_gt), ep_y[candidate_idxs].view(-1, num_gt)
    is_in = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy],
                        dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in
    ov_inf = torch.full_like(overlaps, -float("inf")).t().contiguous().view(-1)
    index = candidate_idxs.view(-1)[is_pos.view(-1)]
    ov_inf[index] = overlaps.t().contiguous().view(-1)[index]
    ov_inf = ov_inf.view(num_gt, -1).t()
    max_ov, argmax_ov = ov_inf.max(dim=1)
    assigned[max_ov != -float("inf")] = argmax_ov[max_ov != -float("inf")] + 1
    return assigned - 1


# --------------------------------------------------------------------------- score voting
def score_voting_official(det_boxes, det_labels, cand_boxes, cand_scores, score_thr=0.05):
    """mmdet ``PAAHead.score_voting`` (loops over classes and detections) -> voted (D, 4) boxes,
    returned in the input order of the detections (the official regroups them by class)."""
    mask = cand_scores > score_thr
    nz = mask.nonzero()
    cand_inds, cand_labels = nz[:, 0], nz[:, 1]
    c_boxes, c_scores = cand_boxes[cand_inds], cand_scores[mask]
    out = det_boxes.clone()
    for cls in range(cand_scores.shape[1]):
        cls_mask = cand_labels == cls
        if not cls_mask.any():
            continue
        s, b = c_scores[cls_mask], c_boxes[cls_mask]
        det_idx = (det_labels == cls).nonzero().squeeze(1)
        ious = pairwise_iou_mmdet(det_boxes[det_idx], b)
        for j, d in enumerate(det_idx.tolist()):
            m = ious[j] > 0.01
            pis = (torch.exp(-(1 - ious[j][m]) ** 2 / 0.025) * s[m])[:, None]
            out[d] = torch.sum(pis * b[m], dim=0) / torch.sum(pis, dim=0)
    return out


def make_voting_inputs(gen, num_dets=100, num_cands=5000, num_classes=80, device="cpu"):
    """Candidates clustered around 150 objects (jittered boxes), scores mostly low; the
    detections are candidates of the object's class (as NMS survivors would be)."""
    centres = torch.rand((150, 2), generator=gen) * 1000
    sizes = 20 + torch.rand((150, 2), generator=gen) * 200
    obj = torch.randint(0, 150, (num_cands,), generator=gen)
    ctr = centres[obj] + torch.randn((num_cands, 2), generator=gen) * sizes[obj] * 0.1
    wh = sizes[obj] * (1 + 0.1 * torch.randn((num_cands, 2), generator=gen)).clamp(min=0.5)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    obj_cls = torch.randint(0, num_classes, (150,), generator=gen)
    scores = torch.rand((num_cands, num_classes), generator=gen) ** 8 * 0.3
    own = torch.rand(num_cands, generator=gen) * 0.9 + 0.06
    scores[torch.arange(num_cands), obj_cls[obj]] = own
    det = torch.randperm(num_cands, generator=gen)[:num_dets]
    return (boxes[det].to(device), obj_cls[obj[det]].to(device), boxes.to(device),
            scores.to(device))


# ---------------------------------------------------------------------------------- main
def _time(fn: Callable, repeats: int, device) -> Tuple[float, object]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--objects", type=int, default=50, help="ground truths per image")
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="800x1333", help="ATSS image size HxW")
    parser.add_argument("--skip-atss", action="store_true")
    parser.add_argument("--skip-voting", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). 1 by default: the loop is "
                             "single-threaded, and on a loaded machine extra threads only contend")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    warnings.filterwarnings("ignore", category=UserWarning)
    if GaussianMixture is not None:
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
    loop_kind = "sklearn" if GaussianMixture is not None else "numpy-EM"

    costs, gt_inds, lvls = make_paa_batch(gen, args.images, args.objects, args.levels, device)
    num_gts = args.images * args.objects
    t_ours, keep = _time(lambda: paa_reassign(costs, gt_inds, lvls, num_gts), args.repeats, device)
    t0 = time.perf_counter()
    keep_loop = paa_official_loop(costs, gt_inds, lvls, num_gts)
    t_loop = (time.perf_counter() - t0) * 1000
    diff_gts = torch.unique(gt_inds[keep != keep_loop]).numel()
    n_cand = int(sum(min(9, int(c)) for c in torch.bincount(gt_inds * args.levels + lvls,
                                                             minlength=num_gts * args.levels)))
    print(f"PAA re-assignment: {args.images} images x {args.objects} objects = {num_gts} GMM fits, "
          f"{len(costs)} initial positives, {n_cand} GMM candidates, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print("| method | ms | speed-up | kept positives | GTs with a different selection |")
    print("|---|---|---|---|---|")
    print(f"| official loop ({loop_kind}) | {t_loop:.1f} | 1.0x | {int(keep_loop.sum())} | - |")
    print(f"| paa_reassign (batched EM) | {t_ours:.1f} | {t_loop / t_ours:.1f}x | "
          f"{int(keep.sum())} | {diff_gts} |")
    assert torch.equal(keep, keep_loop), f"selections differ for {diff_gts} ground truths"
    print("selections identical: yes")

    if not args.skip_voting:
        inputs = [make_voting_inputs(gen, device=device) for _ in range(args.images)]
        t_ours, ours = _time(lambda: [score_voting(*i) for i in inputs], args.repeats, device)
        t_loop, official = _time(lambda: [score_voting_official(*i) for i in inputs], 1, device)
        err = max(float((a - b).abs().max()) for a, b in zip(ours, official))
        moved = sum(float((a - i[0]).abs().max(1).values.mean()) for a, i in zip(ours, inputs))
        print()
        print(f"Score voting: {args.images} images x 100 detections, 5000 candidates x 80 classes")
        print("| method | ms | speed-up | max abs difference (px) |")
        print("|---|---|---|---|")
        print(f"| official loop (classes x detections) | {t_loop:.1f} | 1.0x | - |")
        print(f"| score_voting | {t_ours:.1f} | {t_loop / t_ours:.1f}x | {err:.2e} |")
        print(f"(mean largest coordinate shift by voting: {moved / len(inputs):.2f} px)")
        assert err < 1e-2, err

    if args.skip_atss:
        return
    height, width = (int(v) for v in args.size.split("x"))
    anchors = rs_atss_anchors(height, width, device)
    gts = make_gts(gen, args.images, args.objects, height, width, device)
    t_ours, ours = _time(lambda: atss_match_batch(anchors, gts), args.repeats, device)
    t_loop, official = _time(lambda: torch.stack([atss_official(anchors, g) for g in gts]),
                             max(1, args.repeats // 2), device)
    diff = int((ours != official).sum())
    print()
    print(f"ATSS assignment: {args.images} images x {args.objects} objects, "
          f"{sum(len(a) for a in anchors)} anchors/image ({height}x{width}, 3 per location)")
    print("| method | ms | speed-up | positives | anchors assigned differently |")
    print("|---|---|---|---|---|")
    print(f"| mmdet ATSSAssigner, loop over images | {t_loop:.1f} | 1.0x | "
          f"{int((official >= 0).sum())} | - |")
    print(f"| atss_match_batch | {t_ours:.1f} | {t_loop / t_ours:.2f}x | {int((ours >= 0).sum())} "
          f"| {diff} (distance ties: official order is torch.topk's) |")


if __name__ == "__main__":
    main()
