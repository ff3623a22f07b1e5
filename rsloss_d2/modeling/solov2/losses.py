"""Losses of SOLO / SOLOv2 (focal + dice) and RS-SOLOv2 (RS Loss + balanced dice).

SOLO / SOLOv2: Wang et al., ECCV 2020 / NeurIPS 2020 (Eq. 1–3), ``solov2_head.py`` of the SOLO
repository; RS-SOLOv2: Oksuz et al., ICCV 2021 (Sec. 4, Eq. 10–12), ``solov2_head.py`` of the
official RankSortLoss-Solov2 code. All positives of the per-process batch are pooled (one loss
call per iteration); the focal normaliser (``num_pos_cells + 1``), the dice mean and
RS-SOLOv2's λ are per process, as in the official code (README "Several GPUs"). The functions
return their statistics; the meta-architecture logs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit

from rsloss_d2.losses import (
    balancing_lambda,
    dice_loss,
    positive_score_weights,
    rank_sort_loss,
    score_weighted_mean,
    vectorize_labels,
)

from ..box_losses import Statistic, rs_mask_scalars
from .mask_branch import dynamic_mask_logits
from .targets import SOLOTargets, rescale_masks

__all__ = ["flatten_cate_logits", "positive_mask_dice", "solo_focal_dice_losses",
           "rs_solo_losses", "solo_scalars", "MaskDice"]

_SCORE_WEIGHT_EPS = 1e-10  # RankBasedSOLOv2Head: denominator 1 if Σ w < 1e-10
_DICE_EPS = 1e-3  # SOLO's dice: 0.001 added to each squared sum


def flatten_cate_logits(cate_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, S_l, S_l) → (B, ΣS², C), cells level-major then row-major."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
                      for x in cate_logits], dim=1)


@dataclass
class MaskDice:
    """Dice losses of the positive masks, aligned with the positives of the targets."""

    losses: torch.Tensor  # (P,) 1 − dice of each positive (differentiable)
    anchor: torch.Tensor  # 0-dim zero attached to every instance-branch output (no-positive case)


def positive_mask_dice(
    head_type: str,
    ins_preds: List[Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]],
    mask_features: torch.Tensor,
    targets: SOLOTargets,
    num_grids: Sequence[int],
    mask_strides: Sequence[int],
) -> MaskDice:
    """Predicted masks of the positives vs their GT masks → per-positive dice loss (SOLO Eq. 3).

    * dynamic (SOLOv2): kernels of the positive cells applied to the mask features (stride 4);
      targets = GT masks rescaled by 1/4.
    * vanilla / decoupled (SOLO): the cell's channel (or σ(X_j)·σ(Y_i)) of its level at the
      level's prediction stride ``mask_strides[l]`` (4, 4, 8, 16, 16); targets rescaled by the
      same factor (official ``solo_head.py``).

    Returns:
        :class:`MaskDice`; ``losses`` in the order of ``targets.pos_*``.
    """
    if head_type == "dynamic":
        anchor = sum(x.sum() for x in ins_preds) * 0 + mask_features.sum() * 0
    elif head_type == "vanilla":
        anchor = sum(x.sum() for x in ins_preds) * 0
    else:
        anchor = sum(x.sum() + y.sum() for x, y in ins_preds) * 0
    p = targets.pos_gt.numel()
    if p == 0:
        return MaskDice(losses=anchor.reshape(1)[:0], anchor=anchor)

    if head_type == "dynamic":
        kernels = torch.cat([k.flatten(2) for k in ins_preds], dim=2)  # (B, E, ΣS²)
        pos_kernels = kernels[targets.pos_image, :, targets.pos_cell]  # (P, E)
        logits = dynamic_mask_logits(pos_kernels, targets.pos_image, mask_features,
                                     max_per_image=targets.max_pos_per_image)
        gt = rescale_masks(targets.gt_masks, mask_strides[0])[targets.pos_gt]
        return MaskDice(dice_loss(logits.sigmoid(), gt, eps=_DICE_EPS), anchor)

    # no host sync: level offsets as Python ints (was a tensor copied to the device)
    sizes = [s * s for s in num_grids]
    offsets = [sum(sizes[:level]) for level in range(len(sizes))]
    # positives grouped by level: a stable sort by level, then one slice per level (was one
    # nonzero, i.e. one host sync, per level); within a level the positives keep their order, as
    # the nonzero gave them. The slice lengths come from the targets' one host read (or, if
    # unknown, from one read here for all levels).
    counts = targets.pos_per_level
    if counts is None:
        counts = torch.zeros(len(num_grids), dtype=torch.int64, device=anchor.device).index_add_(
            0, targets.pos_level, torch.ones_like(targets.pos_level, dtype=torch.int64)).tolist()
    by_level = torch.argsort(targets.pos_level, stable=True)
    losses = anchor.new_zeros(p)
    start = 0
    for level, (s, count) in enumerate(zip(num_grids, counts)):  # per level: its own resolution
        sel = by_level[start:start + count]
        start += count
        if count == 0:
            continue
        img = targets.pos_image[sel]
        cell = targets.pos_cell[sel] - offsets[level]
        if head_type == "vanilla":
            probs = ins_preds[level][img, cell].sigmoid()
        else:
            x, y = ins_preds[level]
            probs = x[img, cell % s].sigmoid() * y[img, cell // s].sigmoid()
        gt = rescale_masks(targets.gt_masks, mask_strides[level])[targets.pos_gt[sel]]
        losses = losses.index_put((sel,), dice_loss(probs, gt, eps=_DICE_EPS))
    return MaskDice(losses=losses, anchor=anchor)


def solo_focal_dice_losses(
    cate_logits: torch.Tensor,
    targets: SOLOTargets,
    dice: MaskDice,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    focal_weight: float = 1.0,
    dice_weight: float = 3.0,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Statistic]]:
    """Official SOLO / SOLOv2 losses (SOLO Eq. 1–3).

    ``loss_ins = dice_weight · mean_k (1 − dice_k)`` over all positive masks of the batch;
    ``loss_cate = focal_weight · Σ focal(cells × classes) / (num_pos_cells + 1)``.

    Args:
        cate_logits: (B, ΣS², C) from :func:`flatten_cate_logits`.
        targets: the batch's :class:`SOLOTargets`; dice: its :class:`MaskDice`.

    Returns:
        losses ``{"loss_ins", "loss_cate"}`` (without positives ``loss_ins`` is a zero attached to
        the instance branch; the official code raises there) and the statistics to log
        (:func:`solo_scalars`).
    """
    num_classes = cate_logits.shape[-1]
    logits = cate_logits.reshape(-1, num_classes).float()
    one_hot = F.one_hot(targets.labels.reshape(-1), num_classes + 1)[:, :num_classes]
    focal = sigmoid_focal_loss_jit(logits, one_hot.to(logits.dtype), alpha=focal_alpha,
                                   gamma=focal_gamma, reduction="sum")
    loss_cate = focal_weight * focal / (targets.num_pos_cells + 1).to(logits.dtype)
    if dice.losses.numel() > 0:
        loss_ins = dice_weight * dice.losses.mean()
    else:
        loss_ins = dice.anchor
    mean_dice = (1 - dice.losses.detach()).mean() if dice.losses.numel() else None
    stats = solo_scalars(targets, int(dice.losses.numel()), mean_dice)
    return {"loss_ins": loss_ins, "loss_cate": loss_cate}, stats


def rs_solo_losses(
    cate_logits: torch.Tensor,
    targets: SOLOTargets,
    dice: MaskDice,
    delta: float = 0.5,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Statistic]]:
    """RS-SOLOv2 losses (RS Loss paper Sec. 4): RS Loss with dice sorting targets + balanced dice.

    1. flat logits: every cell × class of the batch; targets one-hot with the positive entries
       set to the dice coefficient ``1 − ℓ_k`` (detached) of that cell's predicted mask — a
       positive with dice exactly 0 becomes a negative, as officially;
    2. ``L_rank, L_sort = RS(logits, targets, δ)``;
    3. ``w_k = max_c σ(logit_{k,c})`` (detached), ``L_ins = Σ w_k ℓ_k / Σ w_k``;
    4. ``loss_ins = λ · L_ins`` with ``λ = (L_rank + L_sort) / L_ins`` (detached).

    Needs one positive per cell (``cell_assignment`` "first" as RS-SOLOv2, or "last"). The
    official head takes ℓ_k in GT order but the targets and weights in ascending cell order, so
    with several GTs on one (level, image) dice values land on the wrong cells; that ordering
    quirk is NOT reproduced: here ℓ_k, its target entry and w_k all belong to the same cell.

    Returns:
        losses ``{"loss_rank", "loss_sort", "loss_ins"}`` (zeros attached to the graph without
        positives) and the statistics to log (:func:`solo_scalars`).
    """
    num_classes = cate_logits.shape[-1]
    logits = cate_logits.reshape(-1, num_classes)
    total = targets.labels.shape[1]
    rows = targets.pos_image * total + targets.pos_cell  # row of each positive in `logits`
    p = rows.numel()
    if p == 0:
        zero = logits.sum() * 0
        stats = solo_scalars(targets, 0, None, loss_unbalanced=None, lam=0.0)
        return ({"loss_rank": zero, "loss_sort": zero.detach().clone(), "loss_ins": dice.anchor},
                stats)
    dice_coef = (1 - dice.losses.detach()).float()
    sort_targets = torch.zeros(logits.shape[0], dtype=dice_coef.dtype, device=logits.device)
    sort_targets[rows] = dice_coef
    flat_targets = vectorize_labels(targets.labels.reshape(-1), num_classes, ious=sort_targets)
    loss_rank, loss_sort = rank_sort_loss(logits, flat_targets, delta=delta)
    weights = positive_score_weights(logits[rows])
    loss_ins = score_weighted_mean(dice.losses, weights, eps=_SCORE_WEIGHT_EPS)
    lam = balancing_lambda(loss_ins, loss_rank + loss_sort)
    stats = solo_scalars(targets, p, dice_coef.mean(), loss_unbalanced=loss_ins.detach(), lam=lam)
    return {"loss_rank": loss_rank, "loss_sort": loss_sort, "loss_ins": loss_ins * lam}, stats


def solo_scalars(targets: SOLOTargets, num_masks: int, mean_dice, **rs) -> Dict[str, Statistic]:
    """The logged statistics of both SOLO losses, with the names every family uses.

    ``num_pos`` (positive cells per image), ``num_masks`` (positive masks of the batch),
    ``mean_pos_dice`` (mean dice coefficient of the positive masks, RS-SOLOv2's sorting target)
    and, for RS-SOLOv2 (``rs``: ``loss_unbalanced``, ``lam``), the names of
    :func:`rsloss_d2.modeling.box_losses.rs_mask_scalars`. ``None``: undefined here.
    """
    stats = {"num_pos": targets.num_pos_cells / targets.labels.shape[0], "num_masks": num_masks,
             "mean_pos_dice": mean_dice}
    if rs:
        stats.update(rs_mask_scalars(rs["loss_unbalanced"], rs["lam"]))
    return stats
