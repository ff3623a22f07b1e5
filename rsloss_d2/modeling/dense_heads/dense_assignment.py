"""Anchor assignment of the ranking-loss dense detectors, vectorised over the batch.

Spec: ``shared/spec/models.md`` §3 (ATSS), §4 (PAA), §9/§10 (MaxIoU 0.5 / 0.4). Everything works
on the anchors of all FPN levels concatenated in Detectron2's order (level, y, x, anchor) and
returns, per image, the index of the assigned GT of every anchor:

* ``>= 0``: positive for that GT (index into the image's GTs);
* ``NEGATIVE`` (−1): negative (background);
* ``IGNORED`` (−2): neither (MaxIoU ignore band, or an invalid anchor).

Invalid anchors (``valid_anchor_mask``: cells beyond the image's own padded size, i.e. in the
batch padding — mmdet's ``valid_flags``) never take part in an assignment and are always ignored.
The ATSS rule itself and the PAA re-assignment (GMM) live in ``rsloss_d2.modeling.matchers``.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from ..host_copies import to_device

__all__ = [
    "NEGATIVE",
    "IGNORED",
    "valid_anchor_mask",
    "valid_grid_sizes",
    "padded_gt_boxes",
    "max_iou_assign",
    "atss_assign",
]

NEGATIVE = -1
IGNORED = -2


def valid_anchor_mask(
    grid_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    num_anchors: int,
    image_sizes: torch.Tensor,
    size_divisibility: int,
) -> torch.Tensor:
    """mmdet ``valid_flags``: an anchor is valid iff its cell lies inside the image padded alone.

    Args:
        grid_sizes: (H_l, W_l) of every level.
        strides: stride of every level.
        num_anchors: A, anchors per location (same on every level).
        image_sizes: (N, 2) int (h, w) of every image before batch padding.
        size_divisibility: the per-image padding multiple (32 for an FPN up to P5).

    Returns:
        (N, R) bool, R = Σ_l H_l·W_l·A in Detectron2's anchor order.
    """
    div = max(int(size_divisibility), 1)
    padded = (image_sizes + div - 1) // div * div  # (N, 2)
    masks = []
    for (h, w), s in zip(grid_sizes, strides):
        # no host sync: clamp to the grid with Python ints (a device tensor [h, w] would copy)
        cells = (padded + s - 1) // s
        valid_h = cells[:, 0].clamp(max=int(h))
        valid_w = cells[:, 1].clamp(max=int(w))
        ys = torch.arange(h, device=padded.device)
        xs = torch.arange(w, device=padded.device)
        m = (ys[None, :, None] < valid_h[:, None, None]) & (
            xs[None, None, :] < valid_w[:, None, None])  # (N, H, W)
        masks.append(m[..., None].expand(-1, -1, -1, num_anchors).reshape(len(image_sizes), -1))
    return torch.cat(masks, dim=1)


def valid_grid_sizes(
    grid_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    image_sizes: Sequence[Sequence[int]],
    size_divisibility: int,
) -> List[List[Tuple[int, int]]]:
    """:func:`valid_anchor_mask` on the host: per image and level, (valid_h, valid_w) in cells.

    The valid anchors of image i on level l are exactly the ``[:valid_h, :valid_w]`` corner of
    the level's (H_l, W_l, A) grid, so with these host ints an image's valid anchors are a slice
    (no boolean mask, no host read of the device mask).

    Args:
        grid_sizes, strides, size_divisibility: as :func:`valid_anchor_mask`.
        image_sizes: N host pairs (h, w) (Detectron2's ``ImageList.image_sizes``).
    """
    div = max(int(size_divisibility), 1)
    out = []
    for h_img, w_img in image_sizes:
        ph, pw = (int(h_img) + div - 1) // div * div, (int(w_img) + div - 1) // div * div
        out.append([(min((ph + s - 1) // s, int(h)), min((pw + s - 1) // s, int(w)))
                    for (h, w), s in zip(grid_sizes, strides)])
    return out


def padded_gt_boxes(gt_boxes: List[torch.Tensor]):
    """List of (G_i, 4) → ((N, G_max, 4) boxes, (N, G_max) bool mask of the real GTs)."""
    num = max([len(b) for b in gt_boxes] + [0])
    ref = gt_boxes[0]
    boxes = ref.new_zeros((len(gt_boxes), num, 4))
    real = torch.zeros((len(gt_boxes), num), dtype=torch.bool, device=ref.device)
    for i, b in enumerate(gt_boxes):  # N small copies; the assignment itself is batched
        boxes[i, : len(b)] = b
        real[i, : len(b)] = True
    return boxes, real


def _batched_iou(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, G, 4) GT boxes × (R, 4) anchors → (N, G, R) IoU (0 for empty boxes)."""
    gt = gt.float()
    anchors = anchors.float()
    area_g = ((gt[..., 2] - gt[..., 0]).clamp(min=0) * (gt[..., 3] - gt[..., 1]).clamp(min=0))
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    iw = (torch.min(gt[..., 2, None], anchors[:, 2]) - torch.max(gt[..., 0, None], anchors[:, 0]))
    ih = (torch.min(gt[..., 3, None], anchors[:, 3]) - torch.max(gt[..., 1, None], anchors[:, 1]))
    inter = iw.clamp_(min=0) * ih.clamp_(min=0)
    union = area_g[..., None] + area_a - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


@torch.no_grad()
def max_iou_assign(
    anchors: torch.Tensor,
    gt_boxes: List[torch.Tensor],
    valid: torch.Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
) -> torch.Tensor:
    """mmdet ``MaxIoUAssigner`` (``gt_max_assign_all=True``) over the whole batch at once.

    Per anchor, IoU with its best GT (first GT on ties): positive if ≥ ``pos_iou_thr``, negative
    if < ``neg_iou_thr``, ignored in between. With ``match_low_quality`` every anchor whose IoU
    with a GT equals that GT's best IoU (ties included) becomes positive for that GT if the best
    IoU is ≥ ``min_pos_iou``; later GTs override earlier ones (mmdet's loop order). Departure from
    mmdet: a GT whose best IoU is 0 (e.g. a degenerate box) hands out no low-quality match;
    mmdet with ``min_pos_iou=0`` would make every zero-IoU anchor of the image positive for it.

    Args:
        anchors: (R, 4) XYXY anchors of all levels.
        gt_boxes: N tensors (G_i, 4) XYXY.
        valid: (N, R) bool from :func:`valid_anchor_mask`.

    Returns:
        (N, R) int64: GT index, ``NEGATIVE`` or ``IGNORED``.
    """
    boxes, real = padded_gt_boxes(gt_boxes)
    n, r = valid.shape
    out = torch.full((n, r), IGNORED, dtype=torch.long, device=anchors.device)
    if boxes.shape[1] == 0:
        return out.masked_fill_(valid, NEGATIVE)
    # invalid anchors and padded GT rows get IoU −1: never a max, never negative
    ious = _batched_iou(boxes, anchors).masked_fill_(~valid[:, None, :], -1)
    ious.masked_fill_(~real[:, :, None], -1)
    max_iou, argmax = ious.max(dim=1)  # (N, R)
    # a valid anchor of an image without GT (only padded rows) has IoU 0: negative
    max_iou = torch.where(valid, max_iou.clamp(min=0), max_iou)
    out = torch.where((max_iou >= 0) & (max_iou < neg_iou_thr), NEGATIVE, out)
    out = torch.where(max_iou >= pos_iou_thr, argmax, out)
    if match_low_quality:
        gt_best = ious.max(dim=2).values  # (N, G)
        ok = real & (gt_best >= min_pos_iou) & (gt_best > 0)
        is_best = (ious == gt_best[..., None]) & ok[..., None]  # (N, G, R)
        has = is_best.any(dim=1)
        num_gt = ious.shape[1]
        last = num_gt - 1 - is_best.flip(1).to(torch.uint8).argmax(dim=1)
        out = torch.where(has, last, out)
    return out


@torch.no_grad()
def atss_assign(
    anchors_per_level: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    valid: torch.Tensor,
    topk: int = 9,
    grid_sizes: Optional[Sequence[Sequence[int]]] = None,
    valid_sizes: Optional[Sequence[Sequence[Tuple[int, int]]]] = None,
) -> torch.Tensor:
    """ATSS assignment (mmdet ``ATSSAssigner``, spec §3) of every image, on its valid anchors.

    Images whose anchors are all valid (no batch padding) go through one batched call of
    :func:`rsloss_d2.modeling.matchers.atss_match_batch`; an image with invalid anchors is matched
    alone on its valid anchors of each level, as mmdet does (``num_level_anchors_inside``).
    Every valid non-positive anchor is negative.

    Args:
        anchors_per_level: L tensors (A_l, 4) XYXY.
        gt_boxes: N tensors (G_i, 4) XYXY.
        valid: (N, R) bool, R = Σ A_l.
        grid_sizes, valid_sizes: optional host ints, (H_l, W_l) per level and
            :func:`valid_grid_sizes` (the same validity as ``valid``). With them, which images are
            whole and which anchors of the others are valid is known on the host: no host sync
            (without them: one read of ``valid``, and boolean masks for the padded images).

    Returns:
        (N, R) int64: GT index, ``NEGATIVE`` or ``IGNORED`` (invalid anchors).
    """
    from rsloss_d2.modeling.matchers import atss_match, atss_match_batch

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
