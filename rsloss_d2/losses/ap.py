"""AP Loss (Chen et al., CVPR 2019 / TPAMI 2020), the official algorithm without its loop.

Spec: ``shared/spec/ranking_losses.md`` §4. Values and the identity-update gradient equal those of
the official per-positive loop with interpolation
(:func:`rsloss_d2.losses.reference.ap_loss_reference`) up to float rounding. The interpolated
precision "max over the positives visited so far in ascending logit order" is a cumulative max;
all sums of the smoothed step go through sorted breakpoints and prefix sums (:mod:`._step_sums`).
"""
from __future__ import annotations

import torch

from ._step_sums import (
    PointBins,
    StepBins,
    no_autocast,
    positive_indices,
    prepare_inputs,
    step_sums_over_points,
)

__all__ = ["ap_loss", "APLossFunction"]


class APLossFunction(torch.autograd.Function):
    """Autograd Function of AP Loss: ``forward(s, t, delta) -> loss``; backward = stored gradient ×
    upstream gradient (spec §4.1)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, delta: float):
        with no_autocast(s.device.type):
            loss, grad = _ap_forward(s.detach(), t, delta)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


def _ap_forward(s: torch.Tensor, t: torch.Tensor, delta: float):
    pos = t == 1
    neg = t == 0
    pos_idx = positive_indices("ap_loss", s, pos)  # the one host read (+ NaN/Inf check)
    num_fg = pos_idx.numel()
    if num_fg == 0:
        return s.new_zeros(()), torch.zeros_like(s)
    fg_s = s[pos_idx]
    bins = StepBins(fg_s, delta)
    negatives = PointBins(bins, s, neg)
    fp_num = negatives.sums_at_centers().to(s.dtype)
    rank_pos = 1 + (step_sums_over_points(bins, fg_s)[0] - 0.5).to(s.dtype)  # 1 + Σ_{j≠i} H(x_ij)
    rank = rank_pos + fp_num
    prec = rank_pos / rank
    # Interpolation (spec §4.1): p̂(i) = max prec over the positives up to i in ascending logit
    # order. Tied logits have identical prec, so the tie order does not matter.
    order = torch.argsort(fg_s, stable=True)
    interp = torch.empty_like(prec)
    interp[order] = torch.cummax(prec[order], 0).values
    # The official loop takes the first branch iff max_prec (before i) ≤ prec(i) ⇔ p̂(i) == prec(i).
    first_branch = interp == prec
    scale = torch.where(first_branch, torch.ones_like(prec),
                        (1 - interp) / torch.where(first_branch, torch.ones_like(prec), 1 - prec))
    neg_weight = scale / rank / num_fg
    alpha, beta = bins.tables(neg_weight)
    grad = negatives.evaluate(alpha, beta)
    grad[pos_idx] = -(1 - interp) / num_fg
    return 1 - interp.mean(), grad


def ap_loss(logits: torch.Tensor, targets: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """AP Loss with interpolated precision (spec §4; official identity update / error-driven
    update of Chen et al.).

    Args:
        logits: any shape; fp16/bf16/fp32 computed in fp32 (also under autocast), fp64 in fp64.
        targets: same number of elements; ``1`` positive, ``0`` negative, anything else (−1)
            ignored.
        delta: δ > 0 of the smoothed step.

    Returns:
        scalar ``1 − mean_i p̂(i)`` in the compute dtype; its gradient is the official one
        (positives −(1 − p̂(i))/|P|, negatives Σ_i H(x_ij)/rank(i) · interpolation factor / |P|).
        Without positives: zero attached to the graph with zero gradient.

    Raises:
        FloatingPointError: NaN/Inf in ``logits``.
    """
    if not delta > 0:
        raise ValueError(f"ap_loss: delta must be > 0, got {delta}")
    with no_autocast(logits.device.type):
        s, t = prepare_inputs("ap_loss", logits, targets)
        return APLossFunction.apply(s, t, float(delta))
