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
from typing import List, Sequence

import torch

__all__ = [
    "NEGATIVE",
    "IGNORED",
    "valid_anchor_mask",
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
        valid_hw = torch.minimum((padded + s - 1) // s, torch.tensor([h, w], device=padded.device))
        ys = torch.arange(h, device=padded.device)
        xs = torch.arange(w, device=padded.device)
        m = (ys[None, :, None] < valid_hw[:, 0, None, None]) & (
            xs[None, None, :] < valid_hw[:, 1, None, None])  # (N, H, W)
        masks.append(m[..., None].expand(-1, -1, -1, num_anchors).reshape(len(image_sizes), -1))
    return torch.cat(masks, dim=1)


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

    Returns:
        (N, R) int64: GT index, ``NEGATIVE`` or ``IGNORED`` (invalid anchors).
    """
    from rsloss_d2.modeling.matchers import atss_match, atss_match_batch

    n, r = valid.shape
    out = torch.full((n, r), IGNORED, dtype=torch.long, device=valid.device)
    full = valid.all(dim=1).tolist()  # one host read
    whole = [i for i in range(n) if full[i]]
    if whole:
        matched = atss_match_batch(anchors_per_level, [gt_boxes[i] for i in whole], topk=topk)
        out[whole] = matched.clamp(min=NEGATIVE)
    sizes = [len(a) for a in anchors_per_level]
    for i in (i for i in range(n) if not full[i]):  # images inside the batch padding only
        per_level = [a[m] for a, m in zip(anchors_per_level, valid[i].split(sizes))]
        out[i, valid[i]] = atss_match(per_level, gt_boxes[i], topk=topk).clamp(min=NEGATIVE)
    return out
