"""Grid-cell targets of SOLO / SOLOv2 / RS-SOLOv2 (SOLO paper Sec. 3.2–3.3, centre sampling).

Official: ``solov2_target_single`` of ``mmdet/models/anchor_heads/solov2_head.py`` of the SOLO
repository (``solo_head.py`` for SOLO's per-level mask targets). Everything is
computed for all GTs of all images of the batch at once (one loop over the five levels); there is
one host read per batch: the number of positives (a data-dependent size), read together with the
other counts the losses need (:class:`SOLOTargets`).

Differences from mmdet-1, as AdelaiDet: GT boxes are Detectron2's (x2 = x1 + w, no −1)
and the masks are those of Detectron2's mapper (at the resized image size, zero-padded to the
padded batch size). Crowd annotations never reach the model (Detectron2's mapper drops them, as
mmdet puts them in ``gt_bboxes_ignore``, unused).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = [
    "CELL_ASSIGNMENTS",
    "SOLOTargets",
    "padded_gt_masks",
    "rescale_masks",
    "mask_centers",
    "level_cells",
    "build_solo_targets",
]

# How cells covered by several GTs of one image are resolved :
#   "all":   official SOLOv2 — the cell's label is the last GT's, and every (GT, cell) pair is a
#            positive mask (a cell can have two masks);
#   "last":  SOLO — last GT overwrites label and mask: one positive per cell;
#   "first": RS-SOLOv2 — first GT wins: one positive per cell.
CELL_ASSIGNMENTS = ("all", "last", "first")


@dataclass
class SOLOTargets:
    """Targets of one batch. Cells are indexed per image over all levels, level-major and
    row-major inside a level (``cell = level_offset[l] + i·S_l + j``)."""

    labels: torch.Tensor  # (B, ΣS²) int64 class per cell, C = background
    pos_image: torch.Tensor  # (P,) image of each positive mask
    pos_cell: torch.Tensor  # (P,) cell of each positive mask
    pos_level: torch.Tensor  # (P,) level of each positive mask
    pos_gt: torch.Tensor  # (P,) index of its GT in the batch's concatenated GTs
    num_pos_cells: torch.Tensor  # 0-dim int64: distinct positive cells (num_ins)
    gt_masks: torch.Tensor  # (K, H_u, W_u) bool, padded full-resolution GT masks
    # host ints, read with the number of positives (None: not known, read where needed)
    max_pos_per_image: Optional[int] = None  # most positives of one image
    pos_per_level: Optional[List[int]] = None  # (L,) positives of each level


def padded_gt_masks(instances: Sequence[Instances], padded_size: Tuple[int, int],
                    device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the GTs of the batch.

    Returns:
        masks (K, H_u, W_u) bool (zero-padded), boxes (K, 4) XYXY, classes (K,) int64,
        image index (K,) int64; GTs in image order, then annotation order.
    """
    hu, wu = padded_size
    masks, boxes, classes, image = [], [], [], []
    for b, inst in enumerate(instances):
        n = len(inst)
        gm = inst.gt_masks if inst.has("gt_masks") else None
        if isinstance(gm, PolygonMasks):
            gm = BitMasks.from_polygon_masks(gm, *inst.image_size)
        t = gm.tensor.to(device=device, dtype=torch.bool) if gm is not None else (
            torch.zeros((n,) + tuple(inst.image_size), dtype=torch.bool, device=device))
        masks.append(F.pad(t, (0, wu - t.shape[-1], 0, hu - t.shape[-2])))
        boxes.append(inst.gt_boxes.tensor.to(device))
        classes.append(inst.gt_classes.to(device))
        image.append(torch.full((n,), b, dtype=torch.int64, device=device))
    return torch.cat(masks), torch.cat(boxes), torch.cat(classes), torch.cat(image)


def rescale_masks(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """Binary masks rescaled by 1/factor like ``mmcv.imrescale`` (bilinear, rounded), float.

    Args:
        masks: (K, H, W) bool with H, W divisible by ``factor``.

    Returns:
        (K, H/factor, W/factor) float {0, 1}: bilinear (half-pixel centres, no antialias, as
        cv2) then rounded (≥ 0.5 → 1, as cv2's fixed-point rounding of uint8 masks).
    """
    k, h, w = masks.shape
    if factor == 1:
        return masks.float()
    if k == 0:
        return masks.new_zeros((0, h // factor, w // factor), dtype=torch.float32)
    small = F.interpolate(masks[:, None].float(), size=(h // factor, w // factor),
                          mode="bilinear", align_corners=False)[:, 0]
    return (small >= 0.5).float()


def mask_centers(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre of mass (mean row / column index, no +0.5) and area of binary masks, float64.

    Args:
        masks: (K, H, W) bool. Returns c_y (K,), c_x (K,), area (K,) (c = 0 for empty masks).
    """
    k, h, w = masks.shape
    rows = masks.sum(dim=2).to(torch.float64)  # (K, H) exact integer counts, no K×H×W copy
    cols = masks.sum(dim=1).to(torch.float64)  # (K, W)
    area = rows.sum(dim=1)
    ys = torch.arange(h, dtype=torch.float64, device=masks.device)
    xs = torch.arange(w, dtype=torch.float64, device=masks.device)
    denom = area.clamp(min=1)
    return (rows * ys).sum(dim=1) / denom, (cols * xs).sum(dim=1) / denom, area


def level_cells(c_y: torch.Tensor, c_x: torch.Tensor, box_w: torch.Tensor, box_h: torch.Tensor,
                num_grid: int, sigma: float, padded_size: Tuple[int, int]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cells of the centre region of each GT on an S × S grid (SOLO Sec. 3.1).

    The centre region is the σ-scaled box around the mask's centre of mass, limited to the 3×3
    cells around the centre cell.

    Args:
        c_y, c_x: (K,) centre of mass (pixels of the padded input); box_w, box_h: (K,) GT box size.

    Returns:
        cells (K, 9) int64 ``i·S + j`` in row-major order of the 3×3 block starting at
        (top, left), and valid (K, 9) bool (cell inside [top..down] × [left..right]).
    """
    hu, wu = padded_size
    s = num_grid
    step = 1.0 / s
    half_w = 0.5 * sigma * box_w.to(torch.float64)
    half_h = 0.5 * sigma * box_h.to(torch.float64)

    def cell(v, size):  # int((v / size) // (1 / S)) of the official code
        return torch.div(v / size, step, rounding_mode="floor").long()

    coord_w, coord_h = cell(c_x, wu), cell(c_y, hu)
    top_box = cell(c_y - half_h, hu).clamp(min=0)
    down_box = cell(c_y + half_h, hu).clamp(max=s - 1)
    left_box = cell(c_x - half_w, wu).clamp(min=0)
    right_box = cell(c_x + half_w, wu).clamp(max=s - 1)
    top = torch.maximum(top_box, coord_h - 1)
    down = torch.minimum(down_box, coord_h + 1)
    left = torch.maximum(coord_w - 1, left_box)
    right = torch.minimum(right_box, coord_w + 1)
    offsets = torch.arange(3, device=c_y.device)
    rows = top[:, None, None] + offsets[None, :, None]  # (K, 3, 1)
    cols = left[:, None, None] + offsets[None, None, :]  # (K, 1, 3)
    valid = (rows <= down[:, None, None]) & (cols <= right[:, None, None])
    cells = rows * s + cols
    return cells.reshape(-1, 9), valid.reshape(-1, 9)


def build_solo_targets(
    instances: Sequence[Instances],
    padded_size: Tuple[int, int],
    num_grids: Sequence[int],
    scale_ranges: Sequence[Tuple[float, float]],
    sigma: float,
    num_classes: int,
    cell_assignment: str = "all",
) -> SOLOTargets:
    """Category labels and positive (cell, GT) pairs of a batch (SOLO Sec. 3.1).

    A GT is assigned at level l if ``lo_l ≤ √(w·h) ≤ hi_l`` (inclusive; ranges overlap, so a GT
    may be positive on two levels) and its padded mask is not empty (an object that vanished
    when resized is skipped, as officially; a GT in no range is skipped too).

    Args:
        instances: per image ``gt_boxes``, ``gt_classes`` (0..C−1), ``gt_masks`` (BitMasks or
            PolygonMasks at the image size).
        padded_size: (H_u, W_u) of the padded batch.
        num_grids, scale_ranges, sigma: per-level S, (lo, hi) on √(w·h), centre scale σ.
        cell_assignment: see :data:`CELL_ASSIGNMENTS`.

    Returns:
        :class:`SOLOTargets`; positives in image-major, then cell order ("last" / "first") or
        in the official grid order — level, image, GT, row-major cell — ("all");
        ``max_pos_per_image`` and ``pos_per_level`` (host ints) from the one host read.
    """
    if cell_assignment not in CELL_ASSIGNMENTS:
        raise ValueError(f"cell_assignment must be one of {CELL_ASSIGNMENTS}")
    device = instances[0].gt_boxes.device if len(instances) else torch.device("cpu")
    num_images = len(instances)
    masks, boxes, classes, image = padded_gt_masks(instances, padded_size, device)
    c_y, c_x, area = mask_centers(masks)
    box_w = boxes[:, 2] - boxes[:, 0]
    box_h = boxes[:, 3] - boxes[:, 1]
    scale = torch.sqrt((box_w * box_h).clamp(min=0).to(torch.float64))
    sizes = [s * s for s in num_grids]
    total = sum(sizes)
    level_offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    k = masks.shape[0]

    # All levels at once, (L, K, 9): the batch key ``image·ΣS² + level offset + cell`` and the
    # validity of every (level, GT, slot), so that the positive pairs of all levels come from ONE
    # nonzero (level-major, then GT, then row-major cell: the order of one nonzero per level).
    keys, valid = [], []
    for level, (s, (lo, hi)) in enumerate(zip(num_grids, scale_ranges)):
        in_range = (scale >= lo) & (scale <= hi) & (area > 0)
        cells, ok = level_cells(c_y, c_x, box_w, box_h, s, sigma, padded_size)
        keys.append(image[:, None] * total + level_offsets[level] + cells)
        valid.append(ok & in_range[:, None])
    keys = torch.stack(keys)  # (L, K, 9) int64
    valid = torch.stack(valid)  # (L, K, 9) bool

    # GT of each cell: the last (max index) or the first (min index) GT covering it. Scattered
    # from the dense (L, K, 9) pairs (invalid ones carry the neutral value, to key 0): no host
    # read. Integer min / max do not depend on the order of the updates: deterministic.
    gt_ids = torch.arange(k, device=device)[None, :, None].expand(keys.shape)
    neutral = k if cell_assignment == "first" else -1
    owner = torch.full((num_images * total,), neutral, dtype=torch.int64, device=device)
    owner.scatter_reduce_(0, torch.where(valid, keys, 0).reshape(-1),
                          torch.where(valid, gt_ids, neutral).reshape(-1),
                          reduce="amin" if cell_assignment == "first" else "amax")
    assigned = owner < k if cell_assignment == "first" else owner >= 0
    # no host sync: a gather of every cell's owner class, then the background where unassigned
    # (was a boolean-mask assignment, i.e. a nonzero)
    if k > 0:
        labels = classes[owner.clamp(0, k - 1)].to(torch.int64).masked_fill(~assigned, num_classes)
    else:
        labels = torch.full((num_images * total,), num_classes, dtype=torch.int64, device=device)
    num_pos_cells = assigned.sum()

    # The ONE host read of the targets: the number of positives, the most positives of one
    # image (the padded size of the dynamic masks, mask_branch.dynamic_mask_logits) and the
    # positives of each level (SOLO's per-level masks), read together; then nonzero_static with
    # that size does not sync.
    if cell_assignment == "all":  # every valid (GT, cell) pair is a positive
        per_image = torch.zeros(num_images, dtype=torch.int64, device=device).index_add_(
            0, image, valid.sum(dim=(0, 2)))
        per_level = valid.sum(dim=(1, 2))
    else:  # one positive per assigned cell
        per_cell = assigned.view(num_images, total)
        per_image = per_cell.sum(dim=1)
        per_level = torch.stack([x.sum() for x in per_cell.split(sizes, dim=1)])
    counts = torch.cat([per_image.sum()[None], per_image.max()[None], per_level]).tolist()
    num_pos, max_pos_per_image, pos_per_level = counts[0], counts[1], counts[2:]

    if cell_assignment == "all":
        pos_level, pos_gt, slot = torch.nonzero_static(valid, size=num_pos).unbind(1)
        pos_key = keys[pos_level, pos_gt, slot]
    else:
        pos_key = torch.nonzero_static(assigned, size=num_pos).squeeze(1)
        pos_gt = owner[pos_key]
        pos_level = torch.zeros_like(pos_key)
        for offset in level_offsets[1:]:  # level = level starts ≤ cell (no table to copy over)
            pos_level += (pos_key % total >= offset).long()
    return SOLOTargets(
        labels=labels.view(num_images, total),
        pos_image=pos_key // total,
        pos_cell=pos_key % total,
        pos_level=pos_level,
        pos_gt=pos_gt,
        num_pos_cells=num_pos_cells,
        gt_masks=masks,
        max_pos_per_image=max_pos_per_image,
        pos_per_level=pos_per_level,
    )
