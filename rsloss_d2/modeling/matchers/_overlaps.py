"""Box IoU in the arithmetic of mmdet's ``bbox_overlaps`` (mode ``iou``, eps 1e-6).

The assigners and score voting compare IoUs with thresholds (``>=`` mean + std, ``> 0.01``) and
break ties between equal IoUs, so they use exactly mmdet's operation order: union =
area(box1) + area(box2) − overlap, clamped below at eps. (Detectron2's ``pairwise_iou`` differs
only for empty unions, where it returns 0 as this does.)
"""
import torch

__all__ = ["iou_mmdet", "pairwise_iou_mmdet"]

_EPS = 1e-6


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of broadcastable XYXY boxes ``(..., 4)`` and ``(..., 4)`` -> ``(...)``."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (_area(boxes1) + _area(boxes2) - overlap).clamp(min=_EPS)
    return overlap / union


def pairwise_iou_mmdet(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``boxes1`` (N, 4) with every box of ``boxes2`` (M, 4) -> (N, M)."""
    return iou_mmdet(boxes1[:, None, :], boxes2[None, :, :])
