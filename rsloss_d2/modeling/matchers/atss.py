"""ATSS anchor assignment (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020, Alg. 1), exactly as mmdet's
``ATSSAssigner`` (``mmdet/core/bbox/assigners/atss_assigner.py``), vectorised over anchors,
ground truths and images.

Per ground truth g (Alg. 1):
  1. on every level l, the candidates C_l(g) are the ``min(topk, A_l)`` anchors whose centres are
     nearest (Euclidean) to the centre of g;
  2. t_g = mean + std of the IoUs of C(g) = ∪_l C_l(g) with g (std unbiased, as ``torch.std``; a
     single candidate gives NaN, so g gets no positive);
  3. a candidate is positive for g if IoU ≥ t_g and its centre lies inside g by more than 0.01 px
     on all four sides;
  4. an anchor positive for several ground truths goes to the one of highest IoU; equal IoUs go to
     the lowest ground-truth index.

Ties in distance at the k-th place of a level (anchors sharing a centre, e.g. 3 anchors per
location; or locations symmetric about the centre) are broken towards the lower anchor index, so
the result is deterministic (the official code leaves it to ``torch.topk``).

No (A, G) IoU matrix is built: only the per-level (A_l, G) centre distances, then IoUs of the
``Σ_l min(topk, A_l)`` candidates of each ground truth; conflicts are resolved by scatter.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from ..host_copies import to_device
from ...layers.box_iou import iou_mmdet
from .max_iou import IGNORED, NEGATIVE

__all__ = ["atss_match", "atss_match_batch", "atss_assign"]


def _as_tensor(boxes) -> torch.Tensor:
    # Accept Detectron2 ``Boxes`` as well as plain (A, 4) tensors.
    return getattr(boxes, "tensor", boxes)


def _level_candidates(anchor_ctr: torch.Tensor, gt_ctr: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, G, k), ascending, of the k anchors nearest each GT centre; ties -> lower index.

    ``anchor_ctr`` (A_l, 2), ``gt_ctr`` (N, G, 2).
    """
    # Same arithmetic as mmdet: sqrt of the summed squared offsets (sqrt can merge distances).
    ax, ay = anchor_ctr[:, 0].contiguous(), anchor_ctr[:, 1].contiguous()
    dist = ax - gt_ctr[..., 0:1]
    dy = ay - gt_ctr[..., 1:2]
    dist.mul_(dist).add_(dy.mul_(dy)).sqrt_()  # (N, G, A_l), in place: the largest tensors here
    del dy
    a_l = dist.shape[-1]
    vals, idx = dist.topk(k, dim=-1, largest=False, sorted=True)
    if a_l == k:
        return idx.sort(dim=-1).values
    # The anchors strictly nearer than the k-th distance are all in the top k (its first `below`
    # entries); the rest of the top k is a tie at the k-th distance, where torch.topk's choice is
    # replaced by the lowest anchor indices. Done on every row (no host sync: a nonzero over the
    # ambiguous rows would read their number): the tied anchors' indices (others: a_l) go
    # through a second top-k, whose first `k - below` values are the lowest tied indices.
    kth = vals[..., k - 1:k]
    below = (vals < kth).sum(-1, keepdim=True)  # (N, G, 1)
    tie = dist == kth
    del dist  # (int32 index key below; peak memory stays under the distance computation's)
    order = torch.arange(a_l, dtype=torch.int32, device=tie.device)
    key = torch.where(tie, order, a_l)
    del tie
    tied = key.topk(k, dim=-1, largest=False, sorted=True).values.long()  # (N, G, k)
    del key
    j = torch.arange(k, device=idx.device)
    tied = tied.gather(-1, (j - below).clamp(min=0))  # tied[j - below] at slots j >= below
    return torch.where(j < below, idx, tied).sort(dim=-1).values


def _atss_padded(anchors: List[torch.Tensor], gt: torch.Tensor, gt_valid: torch.Tensor,
                 topk: int) -> torch.Tensor:
    """ATSS on padded ground truths ``gt`` (N, G, 4) with ``gt_valid`` (N, G) -> (N, A) long."""
    all_anchors = torch.cat(anchors, dim=0)
    num_anchors = all_anchors.shape[0]
    n, g = gt.shape[:2]
    out = torch.full((n, num_anchors), -1, dtype=torch.long, device=all_anchors.device)
    num_cand = sum(min(topk, len(a)) for a in anchors)
    if g == 0 or num_anchors == 0 or num_cand < 2:
        # No GT, or one candidate per GT: the threshold's std is NaN, so nothing is positive.
        return out
    gt = gt.to(all_anchors.dtype)
    gt_ctr = (gt[..., :2] + gt[..., 2:]) / 2.0

    cand, start = [], 0
    for a in anchors:  # <= 5 FPN levels
        if len(a):
            ctr = (a[:, :2] + a[:, 2:]) / 2.0
            cand.append(_level_candidates(ctr, gt_ctr, min(topk, len(a))) + start)
        start += len(a)
    cand_idx = torch.cat(cand, dim=-1)  # (N, G, C), level-major
    cand_boxes = all_anchors[cand_idx]  # (N, G, C, 4)
    ious = iou_mmdet(cand_boxes, gt[:, :, None, :])  # (N, G, C)

    # Mean/std over the candidates in mmdet's (C, G) layout, reduced over dim 0.
    ious_cg = ious.transpose(1, 2).contiguous()
    thr = (ious_cg.mean(1) + ious_cg.std(1))[..., None]  # (N, G, 1)

    cand_ctr = (cand_boxes[..., :2] + cand_boxes[..., 2:]) / 2.0
    inside = torch.stack([cand_ctr[..., 0] - gt[..., None, 0], cand_ctr[..., 1] - gt[..., None, 1],
                          gt[..., None, 2] - cand_ctr[..., 0], gt[..., None, 3] - cand_ctr[..., 1]],
                         dim=-1).min(dim=-1).values > 0.01
    pos = (ious >= thr) & inside & gt_valid[..., None]

    # Conflicts: highest IoU wins, then the lowest GT index (two scatter reductions).
    flat = (cand_idx + torch.arange(n, device=cand_idx.device)[:, None, None] * num_anchors)
    flat = flat.reshape(-1)
    score = ious.masked_fill(~pos, float("-inf")).reshape(-1)
    best = ious.new_full((n * num_anchors,), float("-inf"))
    best = best.scatter_reduce(0, flat, score, reduce="amax")
    win = pos.reshape(-1) & (score == best[flat])
    gt_index = torch.arange(g, device=cand_idx.device)[None, :, None].expand_as(pos).reshape(-1)
    assigned = torch.full((n * num_anchors,), g, dtype=torch.long, device=cand_idx.device)
    assigned = assigned.scatter_reduce(0, flat, torch.where(win, gt_index, g), reduce="amin")
    return torch.where(assigned == g, out.reshape(-1), assigned).view(n, num_anchors)


def atss_match(anchors_per_level: Sequence[torch.Tensor], gt_boxes: torch.Tensor,
               topk: int = 9) -> torch.LongTensor:
    """ATSS assignment of one image (mmdet ``ATSSAssigner``; see the module docstring).

    Args:
        anchors_per_level: list over FPN levels of (A_l, 4) XYXY anchors (tensors or ``Boxes``).
        gt_boxes: (G, 4) XYXY ground-truth boxes (tensor or ``Boxes``).
        topk: candidates per level and ground truth (Alg. 1's k; 9 in every config).
    Returns:
        (A,) int64, A = Σ A_l in concatenated level order: index in [0, G) of the anchor's ground
        truth, or -1 (negative). G = 0 gives all -1.
    """
    anchors = [_as_tensor(a) for a in anchors_per_level]
    gt = _as_tensor(gt_boxes).reshape(-1, 4)
    valid = torch.ones((1, gt.shape[0]), dtype=torch.bool, device=gt.device)
    return _atss_padded(anchors, gt[None], valid, topk)[0]


def atss_match_batch(anchors_per_level: Sequence[torch.Tensor],
                     gt_boxes_list: Sequence[torch.Tensor], topk: int = 9) -> torch.LongTensor:
    """:func:`atss_match` for N images sharing the same anchors, in one computation.

    Args:
        anchors_per_level: list over levels of (A_l, 4) XYXY anchors, common to all images.
        gt_boxes_list: N tensors (G_i, 4) XYXY (or ``Boxes``), G_i may be 0.
        topk: as in :func:`atss_match`.
    Returns:
        (N, A) int64: entry [i, a] is the index into ``gt_boxes_list[i]`` or -1; row i equals
        ``atss_match(anchors_per_level, gt_boxes_list[i], topk)``.
    """
    anchors = [_as_tensor(a) for a in anchors_per_level]
    gts = [_as_tensor(b).reshape(-1, 4).to(anchors[0].dtype) for b in gt_boxes_list]
    if len(gts) == 0:
        return torch.empty((0, sum(len(a) for a in anchors)), dtype=torch.long,
                           device=anchors[0].device)
    lengths = to_device([len(b) for b in gts], gts[0].device, torch.long)  # no host sync
    padded = pad_sequence(gts, batch_first=True)  # (N, max G_i, 4), zero rows are padding
    valid = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return _atss_padded(anchors, padded, valid, topk)


@torch.no_grad()
def atss_assign(
    anchors_per_level: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    valid: torch.Tensor,
    topk: int = 9,
    grid_sizes: Optional[Sequence[Sequence[int]]] = None,
    valid_sizes: Optional[Sequence[Sequence[Tuple[int, int]]]] = None,
) -> torch.Tensor:
    """ATSS assignment of every image on its valid anchors, in the encoding of :mod:`.max_iou`.

    Images whose anchors are all valid (no batch padding) go through one batched call of
    :func:`atss_match_batch`; an image with invalid anchors is matched alone on its valid anchors
    of each level, as mmdet does (``num_level_anchors_inside``).
    Every valid non-positive anchor is negative.

    Args:
        anchors_per_level: L tensors (A_l, 4) XYXY.
        gt_boxes: N tensors (G_i, 4) XYXY.
        valid: (N, R) bool, R = Σ A_l.
        grid_sizes, valid_sizes: optional host ints, (H_l, W_l) per level and
            :func:`.valid_flags.valid_grid_sizes` (the same validity as ``valid``). With them,
            which images are whole and which anchors of the others are valid is known on the
            host: no host sync (without them: one read of ``valid``, and boolean masks for the
            padded images).

    Returns:
        (N, R) int64: GT index, ``NEGATIVE`` or ``IGNORED`` (invalid anchors).
    """
    n, r = valid.shape
    sizes = [len(a) for a in anchors_per_level]
    host = grid_sizes is not None and valid_sizes is not None
    if host:
        grids = [(int(h), int(w)) for h, w in grid_sizes]
        full = [list(v) == grids for v in valid_sizes]
    else:
        full = valid.all(dim=1).tolist()  # one host read
    whole = [i for i in range(n) if full[i]]
    if len(whole) == n:  # no batch padding: no IGNORED, no scatter
        matched = atss_match_batch(anchors_per_level, gt_boxes, topk=topk)
        return matched.clamp(min=NEGATIVE)
    out = torch.full((n, r), IGNORED, dtype=torch.long, device=valid.device)
    if whole:
        matched = atss_match_batch(anchors_per_level, [gt_boxes[i] for i in whole], topk=topk)
        # no host sync: the row indices go to the device non-blocking (a list index would not)
        out.index_copy_(0, to_device(whole, out.device, torch.long), matched.clamp(min=NEGATIVE))
    for i in (i for i in range(n) if not full[i]):  # images inside the batch padding only
        if not host:
            per_level = [a[m] for a, m in zip(anchors_per_level, valid[i].split(sizes))]
            out[i, valid[i]] = atss_match(per_level, gt_boxes[i], topk=topk).clamp(min=NEGATIVE)
            continue
        # Valid anchors = the [:vh, :vw] corner of each (H, W, A) grid: slices, no host sync.
        grid_views = []  # (anchors (H, W, A, 4), out row (H, W, A), vh, vw) per level
        for a, o, (h, w), (vh, vw) in zip(anchors_per_level, out[i].split(sizes), grids,
                                          valid_sizes[i]):
            num_a = len(a) // max(h * w, 1)
            grid_views.append((a.reshape(h, w, num_a, 4), o.view(h, w, num_a), vh, vw))
        per_level = [a[:vh, :vw].reshape(-1, 4) for a, _, vh, vw in grid_views]
        res = atss_match(per_level, gt_boxes[i], topk=topk).clamp(min=NEGATIVE)
        for (a, o, vh, vw), part in zip(grid_views, res.split([len(p) for p in per_level])):
            o[:vh, :vw] = part.view(vh, vw, a.shape[2])
    return out
