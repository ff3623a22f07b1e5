"""Box IoU in the arithmetic of mmdet's ``bbox_overlaps`` (mode ``iou``, eps 1e-6).

The assigners, score voting and Fast NMS compare IoUs with thresholds (``>=`` mean + std,
``> 0.01``, ``<= 0.5``) and break ties between equal IoUs, and the RS heads' GIoU loss follows
mmdet's ``GIoULoss``, so all of them use exactly mmdet's operation order
(``mmdet/core/bbox/iou_calculators/iou2d_calculator.py``): overlap = w·h of the clamped
intersection, union = area(box1) + area(box2) − overlap, clamped below at eps. (Detectron2's
``pairwise_iou`` differs only for empty unions, where it returns 0 as this does.)

Every function takes XYXY boxes and works per coordinate, so a pairwise call allocates only
tensors of the output's shape (no strided ``(..., 2)`` intermediates of the broadcast shape).
"""
from typing import Tuple

import torch

__all__ = ["box_overlaps", "iou_mmdet", "pairwise_iou_mmdet"]

_EPS = 1e-6


def box_overlaps(boxes1: torch.Tensor, boxes2: torch.Tensor,
                 eps: float = _EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection area and clamped union of broadcastable XYXY boxes.

    Args:
        boxes1, boxes2: (..., 4) boxes that broadcast against each other.
        eps: lower clamp of the union.

    Returns:
        overlap (...), union (...) (the broadcast shape; differentiable: the in-place steps are
        clamp / product / difference of fresh tensors, whose gradients autograd keeps exact).
    """
    ax1, ay1, ax2, ay2 = boxes1.unbind(-1)
    bx1, by1, bx2, by2 = boxes2.unbind(-1)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    overlap = w.mul_(h)
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)).sub_(overlap).clamp_(min=eps)
    return overlap, union


def iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Element-wise IoU of broadcastable XYXY boxes ``(..., 4)`` and ``(..., 4)`` -> ``(...)``
    (mmdet ``bbox_overlaps(..., is_aligned=True)`` when the shapes are equal)."""
    overlap, union = box_overlaps(boxes1, boxes2, eps)
    return overlap / union


def pairwise_iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor,
                       eps: float = _EPS) -> torch.Tensor:
    """IoU of every box of ``boxes1`` (..., N, 4) with every box of ``boxes2`` (..., M, 4).

    Leading dimensions broadcast, e.g. (B, G, 4) × (R, 4) -> (B, G, R), or (C, K, 4) × (C, K, 4)
    -> (C, K, K).

    Returns:
        (..., N, M) IoUs.
    """
    return iou_mmdet(boxes1[..., :, None, :], boxes2[..., None, :, :], eps)
