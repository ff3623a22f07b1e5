"""Anchors, ground-truth preparation and anchor assignment of YOLACT / RS-YOLACT (mmdet
``AnchorGenerator`` with YOLACT's centres and ``MaxIoUAssigner``, as ``yolact_head.py`` of the
official RankSortLoss repository configures them), batched over images.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import BitMasks, Instances, PolygonMasks

from ..matchers import NEGATIVE, max_iou_assign

__all__ = ["yolact_anchors", "YOLACTTargets", "prepare_targets", "assign_anchors"]


def yolact_anchors(feature_sizes: Sequence[Tuple[int, int]], input_size: int,
                   base_sizes: Sequence[float], scale: float, ratios: Sequence[float],
                   device=None) -> torch.Tensor:
    """Anchors of all levels, (R, 4) XYXY in input pixels, ordered level, y, x, ratio.

    Level l of size (H_l, W_l) has strides ``input_size / W_l`` (x) and ``input_size / H_l`` (y)
    (550 / 69, ... as the official config) and centres ``(k + 0.5)·stride``; side
    ``s = scale · base_sizes[l]``, ``w = s / √r``, ``h = s·√r`` for ratio ``r = h / w``.
    """
    out = []
    r = torch.as_tensor(ratios, dtype=torch.float32, device=device)
    for (fh, fw), base in zip(feature_sizes, base_sizes):
        side = scale * base
        ws, hs = side / torch.sqrt(r), side * torch.sqrt(r)  # (A,)
        sx, sy = input_size / fw, input_size / fh
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * sx
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * sy
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # (H·W, 1)
        boxes = torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)
        out.append(boxes.reshape(-1, 4))
    return torch.cat(out, 0)


@dataclass
class YOLACTTargets:
    """Ground truth of a batch, padded to G objects per image (input-pixel coordinates)."""

    boxes: torch.Tensor  # (B, G, 4) XYXY in the S×S input frame
    classes: torch.Tensor  # (B, G) int64
    valid: torch.Tensor  # (B, G) bool: real (not padding) objects
    masks: torch.Tensor  # (B, G, H_p, W_p) float {0, 1}: GT masks at prototype resolution
    semantic_masks: torch.Tensor  # (B, G, H_3, W_3) float {0, 1} at P3 resolution, or empty


def _dense_masks(masks, height: int, width: int, device) -> torch.Tensor:
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, height, width)
    if isinstance(masks, BitMasks):
        masks = masks.tensor
    return masks.to(device=device, dtype=torch.float32)


def _resize_binary(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of (G, H, W) {0,1} masks, then ``> 0.5``."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0,) + tuple(size))
    return (F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]
            > 0.5).float()


def prepare_targets(gt_instances: List[Instances], image_sizes: List[Tuple[int, int]],
                    input_size: int, mask_size: Tuple[int, int],
                    semantic_size: Tuple[int, int] = None) -> YOLACTTargets:
    """Scale every image's GT to the S×S input frame and pad to the batch's max object count.

    Boxes are scaled by ``(S / w_i, S / h_i)``; masks (BitMasks / PolygonMasks at the image size
    (h_i, w_i)) are resized bilinearly to the prototype size and binarised at 0.5 (official: GT
    mask at 550² → 138² bilinear, > 0.5). GT boxes of zero width or height are marked invalid
    (their encoded deltas would be infinite; the official pipeline filters sides ≤ 4 px). The
    loop over images only converts the ragged per-image inputs; everything after works on the
    padded tensors.
    """
    device = gt_instances[0].gt_boxes.device
    num = max(len(x) for x in gt_instances)
    b = len(gt_instances)
    boxes = torch.zeros((b, num, 4), device=device)
    classes = torch.zeros((b, num), dtype=torch.int64, device=device)
    valid = torch.zeros((b, num), dtype=torch.bool, device=device)
    masks = torch.zeros((b, num) + tuple(mask_size), device=device)
    sem = torch.zeros((b, num) + tuple(semantic_size or (0, 0)), device=device)
    for i, (inst, (h, w)) in enumerate(zip(gt_instances, image_sizes)):
        g = len(inst)
        if g == 0:
            continue
        # no host sync: x and y columns scaled by Python floats (a per-image tensor of scales
        # would be a host-to-device copy); the scalar is rounded to float32 in the product
        gt_boxes = inst.gt_boxes.tensor.to(boxes)
        boxes[i, :g, 0::2] = gt_boxes[:, 0::2] * (input_size / w)
        boxes[i, :g, 1::2] = gt_boxes[:, 1::2] * (input_size / h)
        classes[i, :g] = inst.gt_classes
        wh = boxes[i, :g, 2:] - boxes[i, :g, :2]
        valid[i, :g] = (wh > 0).all(dim=1)  # a degenerate box has no deltas: left out
        if inst.has("gt_masks"):
            dense = _dense_masks(inst.gt_masks, h, w, device)
            masks[i, :g] = _resize_binary(dense, mask_size)
            if semantic_size is not None:
                sem[i, :g] = _resize_binary(dense, semantic_size)
    return YOLACTTargets(boxes, classes, valid, masks, sem)


def assign_anchors(anchors: torch.Tensor, targets: YOLACTTargets, neg_iou: float,
                   pos_iou: float, min_pos_iou: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """mmdet ``MaxIoUAssigner`` (``gt_max_assign_all=False``, ``match_low_quality=True``) for all
    images at once (:func:`rsloss_d2.modeling.matchers.max_iou_assign`).

    An anchor is negative if its max IoU over the image's GTs is in [0, neg_iou), positive (for
    its best GT, first index on ties) if ≥ pos_iou; then each GT whose best IoU is ≥
    ``min_pos_iou`` claims its best anchor (first on ties) whatever the IoU, later GTs
    overwriting earlier ones. The rest (IoU in [neg_iou, pos_iou)) is ignored. An image without
    GT: all negative.

    Args:
        anchors: (R, 4). targets: :class:`YOLACTTargets` with G objects per image.

    Returns:
        state (B, R) int64: 1 positive, 0 negative, −1 ignored;
        matched (B, R) int64: GT index (in 0..G−1) of each positive (0 elsewhere).
    """
    every = torch.ones(targets.valid.shape[:1] + anchors.shape[:1], dtype=torch.bool,
                       device=anchors.device)
    assigned = max_iou_assign(anchors, targets.boxes, every, pos_iou, neg_iou, min_pos_iou,
                              match_low_quality=True, gt_max_assign_all=False,
                              gt_valid=targets.valid)
    state = torch.where(assigned >= 0, 1, torch.where(assigned == NEGATIVE, 0, -1))
    return state, assigned.clamp(min=0)
