"""Losses of YOLACT (softmax + OHEM, SmoothL1, mask BCE, semantic BCE) and RS-YOLACT (RS Loss,
score-weighted GIoU and dice, value-based balancing). Official: mmdet's ``yolact_head.py`` and the
RS-YOLACT head of the RankSortLoss repository.

Every function works on the whole per-process batch at once (no loop over images or positives).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from rsloss_d2.losses import balancing_lambda, score_weighted_mean
from rsloss_d2.losses.dice import dice_loss
from rsloss_d2.modeling.box_losses import (
    Statistic,
    rs_detection_losses,
    rs_mask_scalars,
    rs_scalars,
)

from .targets import YOLACTTargets

__all__ = [
    "ohem_classification_loss",
    "smooth_l1_box_loss",
    "yolact_mask_loss",
    "semantic_segmentation_loss",
    "sample_masks_to_train",
    "rs_yolact_losses",
]


def ohem_classification_loss(logits: torch.Tensor, state: torch.Tensor, labels: torch.Tensor,
                             neg_pos_ratio: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax CE with online hard negative mining 3:1, per image (mmdet ``loss_single_OHEM``).

    Per image i with n_i positives: all positives plus the ``min(ratio·n_i, #neg_i)`` negatives of
    highest CE (all negatives if n_i = 0, as official). Ignored anchors count as negatives with
    CE weight 0 (official: their label is background with label weight 0). Normalised by
    ``N = Σ_i max(n_i, 1)`` (mmdet ``num_total_pos``).

    Args:
        logits: (B, R, K + 1), background last. state: (B, R) 1 / 0 / −1.
        labels: (B, R) class of positives (others unused).

    Returns:
        (loss, N) with N a 0-dim float tensor.
    """
    k = logits.shape[-1] - 1
    pos = state == 1
    target = torch.where(pos, labels, torch.full_like(labels, k))
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    ce = (ce.view_as(labels) * (state >= 0)).float()  # ignored: weight 0
    neg = ~pos
    num_pos = pos.sum(1)
    num_neg = neg.sum(1)
    num_keep = torch.where(num_pos > 0, torch.minimum(neg_pos_ratio * num_pos, num_neg), num_neg)
    neg_ce = torch.where(neg, ce, ce.new_full((), -1.0))
    order = neg_ce.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(
        order.shape[1], device=order.device).expand_as(order))
    hard_neg = neg & (rank < num_keep[:, None])
    total = num_pos.clamp(min=1).sum().float()
    return (ce * (pos | hard_neg)).sum() / total, total


def smooth_l1_box_loss(pred_deltas: torch.Tensor, target_deltas: torch.Tensor, beta: float,
                       normaliser: torch.Tensor) -> torch.Tensor:
    """mmdet ``SmoothL1Loss`` summed over positives × 4 and divided by ``normaliser``.
    (P, 4), (P, 4) → scalar."""
    diff = (pred_deltas.float() - target_deltas.float()).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return loss.sum() / normaliser


def sample_masks_to_train(image_index: torch.Tensor, num_images: int, max_per_image: int,
                          generator=None) -> torch.Tensor:
    """(P,) bool: at most ``max_per_image`` positives per image drawn uniformly at random
    (official ``max_masks_to_train``; ``≤ 0``: all)."""
    n = image_index.numel()
    if max_per_image <= 0 or n == 0:
        return torch.ones(n, dtype=torch.bool, device=image_index.device)
    prio = torch.rand(n, device=image_index.device, generator=generator)
    order = torch.argsort(image_index.double() * 2 + prio.double())  # by image, random within
    counts = torch.bincount(image_index, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    sorted_img = image_index[order]
    rank_sorted = torch.arange(n, device=image_index.device) - starts[sorted_img]
    keep = torch.zeros(n, dtype=torch.bool, device=image_index.device)
    keep[order] = rank_sorted < max_per_image
    return keep


def yolact_mask_loss(masks: torch.Tensor, mask_targets: torch.Tensor, gt_boxes: torch.Tensor,
                     input_size: int, num_images_pos: torch.Tensor) -> torch.Tensor:
    """Mask BCE of YOLACT (mmdet ``YOLACTProtonet.loss``, weight applied by the caller):
    ``Σ_k mean_px BCE(clamp(m_k), t_k) / (w_k / S) / (h_k / S)`` over the trained positives,
    divided by their number (at least 1). Box sides are clamped at one input pixel, so a
    degenerate GT box cannot give an infinite weight (official: no guard).

    Args:
        masks: (P, H, W) cropped mask probabilities. mask_targets: (P, H, W) {0, 1}.
        gt_boxes: (P, 4) assigned GT boxes (input pixels). num_images_pos: P as a tensor.
    """
    if masks.shape[0] == 0:
        return masks.sum() * 0
    bce = F.binary_cross_entropy(masks.float().clamp(0, 1), mask_targets.float(),
                                 reduction="none").mean(dim=(1, 2))
    w = ((gt_boxes[:, 2] - gt_boxes[:, 0]) / input_size).clamp(min=1.0 / input_size)
    h = ((gt_boxes[:, 3] - gt_boxes[:, 1]) / input_size).clamp(min=1.0 / input_size)
    return (bce / w / h).sum() / num_images_pos.clamp(min=1)


def semantic_segmentation_loss(logits: torch.Tensor, targets: YOLACTTargets) -> torch.Tensor:
    """YOLACT's semantic auxiliary loss (mmdet ``YOLACTSegmHead.loss``): per-pixel sigmoid BCE
    against per-class union masks at P3 resolution, ``Σ_{images with GT} Σ BCE / (B·H·W)``.

    The official target writes class c into channel ``c − 1`` (a leftover of 1-based labels:
    class 0 lands in the last channel); the intended channel c is used here.

    Args:
        logits: (B, K, H, W).
    """
    b, k, h, w = logits.shape
    sem = targets.semantic_masks * targets.valid[..., None, None]
    target = logits.new_zeros((b, k, h, w), dtype=torch.float32)
    if sem.shape[1]:
        index = targets.classes[..., None, None].expand_as(sem)
        target = target.scatter_reduce(1, index, sem.float(), reduce="amax", include_self=True)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    has_gt = targets.valid.any(dim=1).float()
    return (bce.sum(dim=(1, 2, 3)) * has_gt).sum() / (b * h * w)


def rs_yolact_losses(logits: torch.Tensor, labels: torch.Tensor, pos_pred_boxes: torch.Tensor,
                     pos_gt_boxes: torch.Tensor, pos_masks: torch.Tensor,
                     pos_mask_targets: torch.Tensor, delta: float = 0.5, num_images: int = 1
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Statistic]]:
    """RS-YOLACT losses (RS Loss paper, Sec. 5): RS Loss over all anchors × K with IoU sorting
    targets, GIoU box loss and dice mask loss, both averaged with the detached max-sigmoid score
    weights w_k and balanced by their own λ = (L_rank + L_sort) / L (two λ's).

    Dice (eps once): ``d_k = 2Σ m t / (Σ m² + Σ t² + 1e-5)``;
    ``L_mask = Σ w_k (1 − d_k) / Σ w_k``
    (= 1 − Σ w_k d_k / Σ w_k).

    Args:
        logits: (R, K) flat logits of the batch (image-major). labels: (R,) 0..K−1 / K / −1.
        pos_pred_boxes, pos_gt_boxes: (P, 4) decoded predictions and assigned GTs of the
            positives, in row order. pos_masks: (P, H, W) cropped mask probabilities;
            pos_mask_targets: (P, H, W) {0, 1}. num_images: images of the batch (statistics).

    Returns:
        losses ``loss_rank``, ``loss_sort``, ``loss_bbox``, ``loss_mask`` and the statistics to
        log (:func:`~rsloss_d2.modeling.box_losses.rs_scalars`,
        :func:`~rsloss_d2.modeling.box_losses.rs_mask_scalars`).
    """
    rs = rs_detection_losses(logits, labels, pos_pred_boxes, pos_gt_boxes, delta=delta)
    if rs.num_pos == 0:
        zero_mask = pos_masks.sum() * 0
        mask_loss = zero_mask
        unbalanced = zero_mask.detach()
        mask_lambda = zero_mask.detach()
    else:
        # eps once (1e-5): dice_loss adds its eps to each of the two sums
        per_mask = dice_loss(pos_masks.clamp(0, 1), pos_mask_targets, eps=0.5e-5)
        unbalanced = score_weighted_mean(per_mask, rs.score_weights.to(per_mask.dtype))
        mask_lambda = balancing_lambda(unbalanced, rs.loss_rank + rs.loss_sort)  # detached
        mask_loss = unbalanced * mask_lambda  # value L_rank + L_sort, gradient λ_mask ∂L_mask
        unbalanced = unbalanced.detach()
    losses = {"loss_rank": rs.loss_rank, "loss_sort": rs.loss_sort, "loss_bbox": rs.loss_box,
              "loss_mask": mask_loss}
    stats = rs_scalars(rs, num_images)
    stats.update(rs_mask_scalars(unbalanced, mask_lambda))
    return losses, stats
