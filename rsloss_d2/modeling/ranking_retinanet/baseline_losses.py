"""Losses and test-time scores of the standard ATSS and PAA heads, the baselines of RS-ATSS /
RS-PAA (``MODEL.RANKING_RETINANET.LOSS`` ``focal_centerness`` / ``focal_iou_pred``).

ATSS: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive
Training Sample Selection", CVPR 2020 (§3, centerness of FCOS); mmdet's
``mmdet/models/dense_heads/atss_head.py`` with ``configs/atss/atss_r50_fpn_1x_coco.py``.
PAA: Kim & Lee, "Probabilistic Anchor Assignment with IoU Prediction for Object Detection",
ECCV 2020 (§3.2 IoU prediction); mmdet's ``mmdet/models/dense_heads/paa_head.py`` with
``configs/paa/paa_r50_fpn_1x_coco.py``.

Inputs follow ``losses.py``: the rows of the whole per-process batch flattened to (R_total, C)
logits and (R_total,) labels (``0..C-1`` foreground, ``C`` background, ``-1`` ignored: label
weight 0), the per-positive quantities in the order of the foreground rows. The mmdet heads
compute the ATSS losses per level and sum them; their normalisers are global, so this equals the
sums over all rows computed here. Without positives the box and quality losses are 0 attached to
the graph.
"""
from typing import Callable, Optional

import torch
from fvcore.nn import sigmoid_focal_loss
from torch.nn import functional as F

from ..box_losses import aligned_iou, giou_loss
from .losses import DenseLossOutput

__all__ = ["QUALITY_BRANCH_LOSSES", "centerness_targets", "focal_centerness_losses",
           "focal_iou_pred_losses", "focal_loss_sum", "quality_test_scores"]

# The losses whose head has the quality branch: ATSS's centerness, PAA's IoU prediction.
QUALITY_BRANCH_LOSSES = ("focal_centerness", "focal_iou_pred")

_EPS = 1e-12  # the ATSS / PAA heads' EPS


def quality_test_scores(logits: torch.Tensor, quality_logits: torch.Tensor,
                        loss: str) -> torch.Tensor:
    """Test-time class scores of the heads with a quality branch, used for the pre-NMS top-k, the
    score threshold, NMS, score voting and as output.

    ATSS (``focal_centerness``): s_c · q, s = sigmoid(class logits), q = sigmoid(centerness): the
    product, as mmdet 2.x's ``multiclass_nms`` multiplies its ``score_factors`` in before the
    threshold (``ATSSHead._get_bboxes``). PAA (``focal_iou_pred``): sqrt(s_c · v), v =
    sigmoid(IoU prediction) (PAA paper §3.3, ``PAAHead._get_bboxes``).

    Args:
        logits: (..., C) class logits. quality_logits: (..., 1) quality logits.
        loss: one of :data:`QUALITY_BRANCH_LOSSES`.

    Returns:
        (..., C) scores in [0, 1].
    """
    scores = logits.sigmoid() * quality_logits.sigmoid()
    if loss == "focal_iou_pred":
        return scores.sqrt()
    if loss != "focal_centerness":
        raise ValueError(f"no quality branch for loss {loss!r}")
    return scores


def focal_loss_sum(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                   gamma: float = 2.0) -> torch.Tensor:
    """Σ sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5) over the non-ignored rows × C classes,
    one-hot class targets (background: all zeros); mmdet ``FocalLoss(use_sigmoid=True)`` with
    label weight 0 on ignored rows, before its ``avg_factor``.

    Args:
        logits: (R, C). labels: (R,) int64 (see the module doc).

    Returns:
        0-dim fp32 sum.
    """
    num_classes = logits.shape[1]
    targets = F.one_hot(labels.clamp(min=0), num_classes + 1)[:, :num_classes]
    loss = sigmoid_focal_loss(logits.float(), targets.float(), alpha, gamma, reduction="none")
    return torch.where((labels >= 0)[:, None], loss, 0.0).sum()


def centerness_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """Centerness of each anchor centre in its GT box (FCOS, Tian et al., ICCV 2019, Eq. 3, as
    ATSS uses it): with l = cx − x1, t = cy − y1, r = x2 − cx, b = y2 − cy,
    c = sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b)) (``ATSSHead.centerness_target``).

    ATSS positives have their centre inside the GT (so c > 0). A centre outside its box (another
    assigner) gets c = 0 here instead of the official formula's NaN / negative values.

    Args:
        anchors: (P, 4) XYXY anchors. gt_boxes: (P, 4) XYXY boxes they are assigned to.

    Returns:
        (P,) fp32 targets in [0, 1].
    """
    anchors, gt_boxes = anchors.float(), gt_boxes.float()
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1).clamp(min=0)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1).clamp(min=0)
    tiny = torch.finfo(torch.float32).tiny
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=tiny)
             * tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=tiny))
    return ratio.sqrt()


def focal_centerness_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_boxes: torch.Tensor,
    pos_target_boxes: torch.Tensor,
    pos_anchors: torch.Tensor,
    pos_centerness_logits: torch.Tensor,
    num_pos_per_image: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_weight: float = 2.0,
    reduce_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> DenseLossOutput:
    """The standard ATSS head's losses (``ATSSHead.loss``).

    * N = Σ_images max(#positives, 1), averaged over the processes (``reduce_mean``), then
      max(N, 1);
    * ``loss_cls`` = Σ focal(α, γ) / N;
    * ``loss_centerness`` = Σ_k BCE-with-logits(q_k, c_k) / N, c_k = :func:`centerness_targets`
      of the anchor and its (decoded) target box;
    * ``loss_bbox`` = w · Σ_k c_k (1 − GIoU(pred_k, target_k)) / C, C = Σ_k c_k averaged over the
      processes (C < 1e-12 → 1), w = 2.0.

    Args:
        logits: (R_total, C). labels: (R_total,).
        pos_pred_boxes: (P, 4) anchor-decoded predictions of the positives (differentiable).
        pos_target_boxes: (P, 4) their targets decoded back onto the anchors (mmdet encodes the
            GT as deltas and decodes them again: the GT up to the coder's clamp).
        pos_anchors: (P, 4) the positives' anchors.
        pos_centerness_logits: (P,) centerness logits of the positives.
        num_pos_per_image: (N,) positives of each image of the per-process batch.
        reduce_mean: mean over the processes of a 0-dim tensor (identity when ``None``); called
            twice on every process, positives or not.

    Returns:
        losses ``loss_cls``, ``loss_centerness``, ``loss_bbox``; stats ``mean_pos_iou``
        (``None`` without positives), ``mean_pos_centerness`` (target; ``None`` likewise).
    """
    reduce_mean = reduce_mean or (lambda x: x)
    norm = reduce_mean(num_pos_per_image.clamp(min=1).sum().float()).clamp(min=1)
    loss_cls = focal_loss_sum(logits, labels, alpha, gamma) / norm
    ctr = centerness_targets(pos_anchors, pos_target_boxes)
    loss_ctr = F.binary_cross_entropy_with_logits(pos_centerness_logits.float(), ctr,
                                                  reduction="sum") / norm
    ctr_sum = reduce_mean(ctr.sum())
    ctr_sum = torch.where(ctr_sum < _EPS, torch.ones_like(ctr_sum), ctr_sum)
    loss_bbox = box_weight * (ctr * giou_loss(pos_pred_boxes, pos_target_boxes)).sum() / ctr_sum
    has_pos = pos_pred_boxes.shape[0] > 0
    stats = {
        "mean_pos_iou": (aligned_iou(pos_pred_boxes.detach(), pos_target_boxes).mean()
                         if has_pos else None),
        "mean_pos_centerness": ctr.mean() if has_pos else None,
    }
    return DenseLossOutput(
        {"loss_cls": loss_cls, "loss_centerness": loss_ctr, "loss_bbox": loss_bbox}, stats)


def focal_iou_pred_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_boxes: torch.Tensor,
    pos_gt_boxes: torch.Tensor,
    pos_iou_logits: torch.Tensor,
    num_images: int,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_weight: float = 1.3,
    iou_weight: float = 0.5,
) -> DenseLossOutput:
    """The standard PAA head's losses (``PAAHead.loss``); every normaliser is per process.

    With P positives (after the reassignment) and u_k = IoU(pred_k (detached), GT_k), eps 1e-6:

    * ``loss_cls`` = Σ focal(α, γ) / max(P, #images);
    * ``loss_iou`` = w_iou · Σ_k BCE-with-logits(v_k, u_k) / P, w_iou = 0.5;
    * ``loss_bbox`` = w · Σ_k max(u_k, 1e-12) (1 − GIoU_k) / Σ_k max(u_k, 1e-12), w = 1.3. The
      official divisor is Σ_k u_k: the same but for the 1e-12 floors, and a division by zero
      when every positive has IoU 0, which this form avoids.

    Args:
        logits: (R_total, C). labels: (R_total,).
        pos_pred_boxes: (P, 4) anchor-decoded predictions of the positives (differentiable).
        pos_gt_boxes: (P, 4) their GT boxes (``reg_decoded_bbox``).
        pos_iou_logits: (P,) IoU-prediction logits of the positives.
        num_images: images of the per-process batch.

    Returns:
        losses ``loss_cls``, ``loss_iou``, ``loss_bbox``; stats ``mean_pos_iou`` (``None``
        without positives).
    """
    num_pos = pos_pred_boxes.shape[0]
    loss_cls = focal_loss_sum(logits, labels, alpha, gamma) / max(num_pos, num_images)
    if num_pos == 0:
        losses = {"loss_cls": loss_cls, "loss_iou": pos_iou_logits.sum() * 0,
                  "loss_bbox": pos_pred_boxes.sum() * 0}
        return DenseLossOutput(losses, {"mean_pos_iou": None})
    ious = aligned_iou(pos_pred_boxes.detach(), pos_gt_boxes)
    loss_iou = iou_weight * F.binary_cross_entropy_with_logits(
        pos_iou_logits.float(), ious, reduction="sum") / num_pos
    weights = ious.clamp(min=_EPS)
    loss_bbox = (box_weight * (weights * giou_loss(pos_pred_boxes, pos_gt_boxes)).sum()
                 / weights.sum())
    return DenseLossOutput({"loss_cls": loss_cls, "loss_iou": loss_iou, "loss_bbox": loss_bbox},
                           {"mean_pos_iou": ious.mean()})
