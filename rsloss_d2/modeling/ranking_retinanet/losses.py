"""Loss computation of the ranking-loss dense detectors (aLRP / AP Loss RetinaNet, RS-ATSS/PAA).

Papers: AP Loss (Chen et al., CVPR 2019), aLRP Loss (Oksuz et al., NeurIPS 2020), RS Loss
(Oksuz et al., ICCV 2021); official heads in ``mmdet/models/dense_heads/`` of the aLRP Loss and
RankSortLoss repositories. Every function takes the predictions of the **whole per-process batch**
flattened to one list of rows (R_total = N·R anchors, image-major; the official ATSS / RetinaNet
heads are level-major, which changes the float summation order only) and the labels of the
assignment:

* ``labels`` (R_total,) int64: ``0..C-1`` foreground class, ``C`` background, ``-1`` ignored
  (MaxIoU ignore band and invalid anchors: whole target row −1).

Positives are the foreground rows in flat order, which is also the order of the positives in
the flattened ``(R_total, C)`` target vector (one positive entry per positive row), so the
per-positive quantities (localisation errors, IoUs) line up with the ranking losses.
Without positives every loss is 0 attached to the graph (zero gradient, no NaN).

Several processes: everything here is per process, as in the official heads (README "Several
GPUs"); the one cross-process statistic is the aLRP self-balance, all-reduced by the model
(``lockstep`` below, :class:`ALRPSelfBalance` ``reduce_fn``).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from fvcore.nn import smooth_l1_loss

from rsloss_d2.losses import ALRPSelfBalance, alrp_loss, ap_loss, vectorize_labels

from ..box_losses import giou_loss, rs_detection_losses, rs_scalars

__all__ = ["DenseLossOutput", "alrp_dense_losses", "ap_dense_losses", "rs_dense_losses"]


@dataclass
class DenseLossOutput:
    """Losses (for the trainer) and detached statistics (for EventStorage; ``None`` = not
    defined in this iteration, see :func:`rsloss_d2.modeling.events.put_scalars`)."""

    losses: Dict[str, torch.Tensor]
    stats: Dict[str, Optional[torch.Tensor]] = field(default_factory=dict)


def alrp_dense_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_boxes: torch.Tensor,
    pos_gt_boxes: torch.Tensor,
    self_balance: Optional[ALRPSelfBalance],
    delta: float = 1.0,
    lockstep: bool = False,
) -> DenseLossOutput:
    """aLRP Loss RetinaNet (aLRP paper Eq. 10–12 and the SB rule of §3.4).

    ℓ_loc(k) = 1 − GIoU(decoded pred_k, GT_k) ∈ [0, 2] (its value enters the classification
    gradient, its gradient comes from the cumulative L_loc only). Total = L_cls + w_SB·L_loc.
    The self-balance step (``self_balance.update``) runs only in iterations with ≥ 1 positive,
    as officially; the new weight already multiplies that iteration's L_loc. With ``lockstep``
    (several processes, ``self_balance`` all-reducing its sums) it runs in every iteration, with
    ``valid=False`` when this process has no positive, so that every process calls the
    collective at the same iterations (see :class:`ALRPSelfBalance`).

    Args:
        logits: (R_total, C) classification logits.
        labels: (R_total,) see the module doc.
        pos_pred_boxes: (P, 4) decoded predictions of the positive rows (differentiable).
        pos_gt_boxes: (P, 4) their GT boxes.
        self_balance: the model's :class:`ALRPSelfBalance` (``None``: weight 1, no update).
        delta: δ of the smoothed step (official 1.0).
        lockstep: update the self-balance in every iteration (see above).

    Returns:
        losses ``loss_cls`` (L_cls), ``loss_bbox`` (w_SB·L_loc); stats ``loss_loc_unweighted``,
        ``self_balance_weight``, ``self_balance_period`` (with a self-balance),
        ``mean_pos_giou_loss`` (None without positives).
    """
    num_classes = logits.shape[1]
    targets = vectorize_labels(labels, num_classes)
    loc_errors = giou_loss(pos_pred_boxes, pos_gt_boxes)
    loss_cls, loss_loc = alrp_loss(logits, targets, loc_errors, delta=delta)
    weight = (self_balance.weight if self_balance is not None
              else torch.ones((), device=logits.device))
    has_pos = pos_pred_boxes.shape[0] > 0
    if self_balance is not None and (has_pos or lockstep):
        weight = self_balance.update(loss_cls, loss_loc, valid=has_pos)
    stats = {"loss_loc_unweighted": loss_loc.detach(), "self_balance_weight": weight.detach()}
    if self_balance is not None:
        stats["self_balance_period"] = self_balance.period
    stats["mean_pos_giou_loss"] = loc_errors.detach().mean() if has_pos else None
    loss_bbox = weight.to(loss_loc.dtype) * loss_loc
    return DenseLossOutput({"loss_cls": loss_cls, "loss_bbox": loss_bbox}, stats)


def ap_dense_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_deltas: torch.Tensor,
    pos_target_deltas: torch.Tensor,
    delta: float = 1.0,
    smooth_l1_beta: float = 1.0,
) -> DenseLossOutput:
    """AP-Loss RetinaNet (Chen et al., CVPR 2019): AP Loss + SmoothL1 on encoded deltas.

    ``loss_bbox = Σ SmoothL1_β(pred − target) / (4·P)`` (mmdet ``SmoothL1Loss``, β 1, weight 1,
    mean over the 4·P coordinates of the positives); total = L_AP + L_SmoothL1, no balancing.

    Args:
        logits: (R_total, C). labels: (R_total,).
        pos_pred_deltas, pos_target_deltas: (P, 4) encoded deltas (Box2BoxTransform weights
            (10, 10, 5, 5) = mmdet stds [0.1, 0.1, 0.2, 0.2]).

    Returns:
        losses ``loss_cls``, ``loss_bbox``.
    """
    num_classes = logits.shape[1]
    targets = vectorize_labels(labels, num_classes)
    loss_cls = ap_loss(logits, targets, delta=delta)
    num_coords = max(pos_pred_deltas.numel(), 1)
    loss_box = smooth_l1_loss(pos_pred_deltas, pos_target_deltas, smooth_l1_beta,
                              reduction="sum") / num_coords
    return DenseLossOutput({"loss_cls": loss_cls, "loss_bbox": loss_box})


def rs_dense_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_pred_boxes: torch.Tensor,
    pos_gt_boxes: torch.Tensor,
    delta: float = 0.5,
) -> DenseLossOutput:
    """RS-ATSS / RS-PAA (RS Loss paper, Sec. 5): RS Loss with IoU sorting targets over all anchors ×
    classes, GIoU box loss weighted by the detached max scores, value-balanced (λ).

    Shares :func:`rsloss_d2.modeling.box_losses.rs_detection_losses` with the RS R-CNN heads.
    Its Σw guard is 1e-10 (RPN / R-CNN) where the ATSS / PAA heads use 1e-12; the two differ
    only when every positive's max score is below 1e-10.

    Returns:
        losses ``loss_rank``, ``loss_sort``, ``loss_bbox`` (λ·L_box); stats: those of
        :func:`~rsloss_d2.modeling.box_losses.rs_scalars` but ``num_pos`` (the caller logs it).
    """
    out = rs_detection_losses(logits, labels, pos_pred_boxes, pos_gt_boxes, delta=delta)
    stats = rs_scalars(out, 1)
    del stats["num_pos"]  # every loss of the family: logged per image by the caller
    return DenseLossOutput(
        {"loss_rank": out.loss_rank, "loss_sort": out.loss_sort, "loss_bbox": out.loss_box},
        stats)

