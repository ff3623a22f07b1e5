"""Glue between detection heads and the ranking losses: targets, score weights, task balancing.

Targets as the official heads build them (one-hot class targets, or the IoU of the positives for
RS Loss), score-weighted averaging and value-based task balancing of the RS heads (RS Loss paper
Sec. 4; the heads in ``mmdet/models/`` of the official RankSortLoss repository). Pure PyTorch,
no host synchronisation except where a shape depends on data (``vectorize_labels`` with
``ious``).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "vectorize_labels",
    "positive_score_weights",
    "score_weighted_mean",
    "value_balanced",
]


def vectorize_labels(
    labels: torch.Tensor,
    num_classes: int,
    label_weights: Optional[torch.Tensor] = None,
    ious: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-prediction class labels → the flat target vector of the ranking losses.

    Args:
        labels: (N,) integer labels: ``0 ≤ l < C`` foreground class, ``l ≥ C`` background,
            ``l < 0`` (e.g. Detectron2's −1) ignored.
        num_classes: C, the number of foreground classes (no background column).
        label_weights: optional (N,); rows with weight 0 are ignored (whole row −1).
        ious: optional continuous targets for RS Loss (§1.3), either one per *foreground-labelled*
            row (``0 ≤ l < C``, in row order, including rows later ignored by ``label_weights``)
            or one per row (N,), whose entries on non-foreground rows are unused. Detached.
            A foreground row with IoU exactly 0 thus becomes a negative for RS Loss (official).

    Returns:
        (N·C,) float targets, row-major (prediction-major, class-minor): 1 (or the IoU) at
        ``(k, l_k)`` of foreground rows, 0 elsewhere, −1 on every entry of ignored rows. dtype is
        float32, or that of ``ious`` if it is float64.
    """
    labels = labels.reshape(-1)
    n = labels.numel()
    dtype = torch.float64 if ious is not None and ious.dtype == torch.float64 else torch.float32
    out = torch.zeros(n, num_classes, dtype=dtype, device=labels.device)
    fg = (labels >= 0) & (labels < num_classes)
    if ious is None:
        values = torch.ones(n, dtype=dtype, device=labels.device)
    else:
        ious = ious.detach().reshape(-1).to(dtype)
        if ious.numel() == n:  # one per row (also the compact form when every row is foreground)
            values = ious
        else:  # one per foreground row: the one host read, to check the count
            num_fg = int(fg.sum())
            if ious.numel() != num_fg:
                raise ValueError(
                    f"vectorize_labels: got {ious.numel()} ious for {num_fg} foreground "
                    f"rows out of {n} predictions"
                )
            slot = (fg.cumsum(0) - 1).clamp_min(0)  # rank of each row among the foreground rows
            values = ious[slot] if num_fg > 0 else torch.zeros(n, dtype=dtype, device=labels.device)
    # Every row writes its class column (0 on the non-foreground rows, whose rows are all 0
    # anyway): a scatter instead of indexing with the foreground rows, so no host sync.
    column = labels.clamp(0, num_classes - 1).unsqueeze(1)
    out.scatter_(1, column, torch.where(fg, values, torch.zeros_like(values)).unsqueeze(1))
    ignored = labels < 0
    if label_weights is not None:
        ignored = ignored | (label_weights.reshape(-1) == 0)
    out[ignored] = -1
    return out.reshape(-1)


def positive_score_weights(pos_logits: torch.Tensor) -> torch.Tensor:
    """Score weights of the positives: ``max_c sigmoid(s_{k,c})`` on detached logits (RS Loss
    paper Sec. 4).

    Args:
        pos_logits: (P, C) classification logits of the positive predictions (all classes, not
            only the GT class), or (P,) for a single-logit head (RPN).

    Returns:
        (P,) detached weights in the compute dtype (float32 for fp16/bf16/fp32, float64 kept).
    """
    x = pos_logits.detach()
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if x.dim() > 1:
        if x.shape[-1] == 0:
            raise ValueError("positive_score_weights: logits have no class column")
        x = x.flatten(1).max(dim=1).values
    return torch.sigmoid(x)  # sigmoid is monotone: max of sigmoid = sigmoid of max


def score_weighted_mean(
    losses: torch.Tensor, weights: torch.Tensor, eps: float = 1e-10
) -> torch.Tensor:
    """``Σ_k w_k ℓ_k / Σ_k w_k`` with the denominator replaced by 1 if ``Σ w < eps`` (RS Loss
    paper Sec. 4).

    Args:
        losses: (P,) per-positive losses (or (P, ...), every entry of row k weighted by w_k;
            the denominator stays Σ_k w_k).
        weights: (P,) weights, used as given (:func:`positive_score_weights` returns them
            detached, as the official heads do).
        eps: 1e-10 for RPN / R-CNN / mask heads / SOLOv2, 1e-12 for ATSS / PAA.

    Returns:
        scalar; 0 (attached to the graph of ``losses``) when there is no positive.
    """
    w = weights.to(losses.dtype).reshape(-1, *([1] * (losses.dim() - 1)))
    total = weights.sum().to(losses.dtype)
    denom = torch.where(total < eps, torch.ones_like(total), total)
    return (losses * w).sum() / denom


def value_balanced(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Value-based task balancing (RS Loss paper Sec. 4): ``λ · loss`` with
    ``λ = reference / loss`` detached.

    The returned value equals ``reference`` (e.g. ``L_rank + L_sort``) while the gradient is
    ``λ ∂loss``; λ is a detached tensor, no ``.item()``/host synchronisation. If ``loss`` is
    exactly 0 (e.g. perfect boxes, or no positive), the official ``ref / loss.item()`` gives
    inf/NaN; here λ = 0 is used instead, so the result is 0 with zero gradient.

    Args:
        loss: scalar task loss (e.g. the score-weighted GIoU loss).
        reference: scalar, usually ``loss_rank + loss_sort`` (only its value is used).
    """
    return loss * balancing_lambda(loss, reference)


def balancing_lambda(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The detached λ of :func:`value_balanced`: ``reference / loss``, 0 where ``loss`` is 0.

    Args:
        loss, reference: scalars (only their values are used).

    Returns:
        0-dim tensor in the dtype of ``loss``.
    """
    value = loss.detach()
    ref = reference.detach().to(value.dtype)
    nonzero = value != 0
    return torch.where(nonzero, ref / torch.where(nonzero, value, torch.ones_like(value)),
                       torch.zeros_like(value))
