"""Box IoU in the arithmetic of mmdet's ``bbox_overlaps`` (mode ``iou``, eps 1e-6).

The assigners and score voting compare IoUs with thresholds (``>=`` mean + std, ``> 0.01``) and
break ties between equal IoUs, so they use exactly mmdet's operation order: union =
area(box1) + area(box2) − overlap, clamped below at eps. (Detectron2's ``pairwise_iou`` differs
only for empty unions, where it returns 0 as this does.)
"""
import torch

__all__ = ["iou_mmdet", "pairwise_iou_mmdet"]

_EPS = 1e-6


def iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of broadcastable XYXY boxes ``(..., 4)`` and ``(..., 4)`` -> ``(...)``."""
    # Per-coordinate tensors: no strided (..., 2) intermediates of the broadcast shape.
    ax1, ay1, ax2, ay2 = boxes1.unbind(-1)
    bx1, by1, bx2, by2 = boxes2.unbind(-1)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    overlap = w * h
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - overlap).clamp(min=_EPS)
    return overlap / union


def pairwise_iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``boxes1`` (N, 4) with every box of ``boxes2`` (M, 4) -> (N, M)."""
    return iou_mmdet(boxes1[:, None, :], boxes2[None, :, :])
