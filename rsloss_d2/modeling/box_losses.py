"""Box losses of the RS heads and the RS + GIoU + task-balancing recipe they all share.

RS Loss paper (Oksuz et al., ICCV 2021): IoU sorting targets, score-weighted regression and
value-based task balancing (Sec. 4), GIoU on decoded boxes; official heads ``RankBased*`` of the
RankSortLoss repository.

:func:`rs_detection_losses` is the one place where the RS RPN, the RS R-CNN box predictor and the
RS Cascade stages turn (logits, labels, decoded positive boxes) into
``(L_rank, L_sort, λ·L_box)``; the heads only differ in how they decode boxes and name the losses.
Everything is computed over the predictions of the per-process batch (README "Several GPUs").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from rsloss_d2.layers.box_iou import box_overlaps
from rsloss_d2.losses import (
    balancing_lambda,
    positive_score_weights,
    rank_sort_loss,
    score_weighted_mean,
    vectorize_labels,
)

__all__ = [
    "aligned_iou",
    "giou_loss",
    "foreground_indices",
    "RSDetectionLosses",
    "Statistic",
    "rs_detection_losses",
    "rs_mask_scalars",
    "rs_scalars",
]

_SCORE_WEIGHT_EPS = 1e-10  # denominator guard of the RPN / R-CNN / mask heads (official)


def _aligned_overlaps(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """Intersection and union (:func:`rsloss_d2.layers.box_iou.box_overlaps`) and enclosing-box
    area of aligned XYXY boxes, all (P,), fp32+."""
    dtype = torch.float64 if boxes1.dtype == torch.float64 else torch.float32
    b1, b2 = boxes1.to(dtype), boxes2.to(dtype)
    overlap, union = box_overlaps(b1, b2, eps)
    enclose_wh = (torch.max(b1[:, 2:], b2[:, 2:]) - torch.min(b1[:, :2], b2[:, :2])).clamp(min=0)
    enclose = (enclose_wh[:, 0] * enclose_wh[:, 1]).clamp(min=eps)
    return overlap, union, enclose


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of aligned box pairs (mmdet ``bbox_overlaps(..., is_aligned=True)``, eps 1e-6).

    Args:
        boxes1, boxes2: (P, 4) XYXY boxes.

    Returns:
        (P,) IoUs in fp32 (fp64 kept).
    """
    overlap, union, _ = _aligned_overlaps(boxes1, boxes2, eps)
    return overlap / union


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-pair GIoU loss ``1 − GIoU(pred, target)`` (mmdet ``GIoULoss``, ``reduction='none'``).

    Args:
        pred: (P, 4) decoded predicted XYXY boxes (differentiable).
        target: (P, 4) XYXY ground-truth boxes.

    Returns:
        (P,) losses in [0, 2], fp32 (fp64 kept).
    """
    overlap, union, enclose = _aligned_overlaps(pred, target, eps)
    gious = overlap / union - (enclose - union) / enclose
    return 1 - gious


def foreground_indices(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows with a foreground label ``0 ≤ l < C``, ascending (the order of the RS targets).

    Args:
        labels: (R,) integer labels, ``C`` = background, ``< 0`` = ignored.

    Returns:
        (P,) int64 indices.
    """
    return ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)


@dataclass
class RSDetectionLosses:
    """What :func:`rs_detection_losses` returns (all scalars are 0-dim tensors)."""

    loss_rank: torch.Tensor  # L_rank, carries the whole RS gradient (RS paper Alg. 1)
    loss_sort: torch.Tensor  # L_sort (its gradient is ignored by RS Loss, as officially)
    loss_box: torch.Tensor  # λ · L_box: value L_rank + L_sort, gradient λ ∂L_box
    loss_box_unbalanced: torch.Tensor  # L_box = Σ w_k GIoU-loss_k / Σ w_k (detached, for logging)
    box_lambda: torch.Tensor  # λ = (L_rank + L_sort) / L_box (detached)
    score_weights: torch.Tensor  # (P,) detached max-sigmoid scores of the positives
    ious: torch.Tensor  # (P,) sorting targets: IoU(detached decoded pred, GT)
    num_pos: int  # P, positives of this process's batch


Statistic = Optional[Union[torch.Tensor, float, int]]  # a logged value; None = undefined here


def rs_scalars(out: RSDetectionLosses, num_images: int) -> Dict[str, Statistic]:
    """The statistics of :func:`rs_detection_losses` under the names every family logs.

    ``num_pos`` (positives per image), ``lambda_bbox`` (λ), ``loss_bbox_unbalanced`` (L_box
    before λ) and ``mean_pos_iou`` (mean IoU sorting target; ``None`` without positives), so that
    ``rpn/``, ``fast_rcnn/``, ``dense/`` and ``yolact/`` curves compare side by side.

    Args:
        out: the recipe's result. num_images: images of the per-process batch.
    """
    return {
        "num_pos": out.num_pos / num_images,
        "lambda_bbox": out.box_lambda,
        "loss_bbox_unbalanced": out.loss_box_unbalanced,
        "mean_pos_iou": out.ious.mean() if out.num_pos > 0 else None,
    }


def rs_mask_scalars(loss_unbalanced: Statistic, lam: Statistic) -> Dict[str, Statistic]:
    """A value-balanced mask loss under the names every family logs: ``lambda_mask`` (λ_mask)
    and ``loss_mask_unbalanced`` (the score-weighted dice loss before λ_mask)."""
    return {"lambda_mask": lam, "loss_mask_unbalanced": loss_unbalanced}


def rs_detection_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_boxes: torch.Tensor,
    pos_gt_boxes: torch.Tensor,
    delta: float = 0.5,
    box_loss_mask: "torch.Tensor | None" = None,
) -> RSDetectionLosses:
    """RS Loss with IoU sorting targets + score-weighted, value-balanced GIoU loss (Sec. 4).

    The recipe shared by the RS RPN (C = 1), the RS R-CNN box head and each RS Cascade stage:

    1. positives P = rows with ``0 ≤ labels < C``; sorting target of positive k =
       ``IoU(detached decoded prediction_k, GT_k)`` (RS paper Sec. 3);
    2. targets = :func:`vectorize_labels` (IoU at ``(k, l_k)``, 0 elsewhere, whole row −1 for
       ignored rows); a positive with IoU exactly 0 therefore counts as a negative (official);
    3. ``L_rank, L_sort = rank_sort_loss(logits, targets, delta)`` over all R·C entries;
    4. ``w_k = max_c sigmoid(logit_{k,c})`` (detached), ``L_box = Σ w_k (1 − GIoU_k) / Σ w_k``
       (denominator 1 if ``Σ w < 1e-10``);
    5. ``λ = (L_rank + L_sort) / L_box`` (detached), box loss ``λ · L_box``.

    Without positives (no GT, or no prediction close enough) the three losses are zeros attached
    to the graph of ``logits`` / ``pos_pred_boxes`` (zero gradients, no NaN). The official heads
    return the constant ``x.sum()*0 + 1`` there: same (zero) gradient, only the logged
    value differs; 0 is used here so that logged totals are not inflated (STYLE.md).

    Args:
        logits: (R, C) classification logits of every prediction of the per-process batch.
        labels: (R,) int64: ``0..C-1`` foreground class, ``C`` background, ``-1`` ignored.
        pos_pred_boxes: (P, 4) XYXY decoded predictions of the positive rows, in the order of
            :func:`foreground_indices` (differentiable w.r.t. the regression branch). For a
            class-specific regressor, the box of the GT class.
        pos_gt_boxes: (P, 4) XYXY boxes of the GTs the positives are assigned to.
        delta: δ of RS Loss (0.5 in every RS model).
        box_loss_mask: optional (P,) bool: positives that enter L_box (and so λ); the others
            still get their IoU sorting target and score weight. ``None`` (official): all.

    Returns:
        :class:`RSDetectionLosses`.
    """
    num_classes = logits.shape[1]
    pos_inds = foreground_indices(labels, num_classes)
    num_pos = int(pos_inds.numel())
    if pos_pred_boxes.shape[0] != num_pos or pos_gt_boxes.shape[0] != num_pos:
        raise ValueError(
            f"rs_detection_losses: {num_pos} foreground rows but {pos_pred_boxes.shape[0]} "
            f"predicted / {pos_gt_boxes.shape[0]} GT boxes"
        )
    if num_pos == 0:
        zero_cls = logits.sum() * 0
        zero_box = pos_pred_boxes.sum() * 0
        empty = logits.new_zeros((0,), dtype=torch.float32)
        return RSDetectionLosses(
            loss_rank=zero_cls,
            loss_sort=zero_cls.detach().clone(),
            loss_box=zero_box,
            loss_box_unbalanced=zero_box.detach(),
            box_lambda=zero_box.detach(),
            score_weights=empty,
            ious=empty,
            num_pos=0,
        )

    ious = aligned_iou(pos_pred_boxes.detach(), pos_gt_boxes)
    targets = vectorize_labels(labels, num_classes, ious=ious)
    loss_rank, loss_sort = rank_sort_loss(logits, targets, delta=delta)

    weights = positive_score_weights(logits[pos_inds])
    box_losses = giou_loss(pos_pred_boxes, pos_gt_boxes)
    box_weights = weights if box_loss_mask is None else weights * box_loss_mask.to(weights.dtype)
    loss_box = score_weighted_mean(box_losses, box_weights, eps=_SCORE_WEIGHT_EPS)
    lam = balancing_lambda(loss_box, loss_rank + loss_sort)  # detached; 0 if L_box == 0
    balanced = loss_box * lam  # = value_balanced(loss_box, L_rank + L_sort), λ kept for logging
    return RSDetectionLosses(
        loss_rank=loss_rank,
        loss_sort=loss_sort,
        loss_box=balanced,
        loss_box_unbalanced=loss_box.detach(),
        box_lambda=lam,
        score_weights=weights,
        ious=ious,
        num_pos=num_pos,
    )
