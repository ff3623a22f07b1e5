"""AP Loss (Chen et al., CVPR 2019 / TPAMI 2020), the official algorithm without its loop.

Values and the identity-update gradient with interpolated precision (CVPR paper Sec. 3, Eq. 5–9
and Alg. 1, the error-driven update; ``APLoss`` in ``mmdet/models/losses/ranking_losses.py`` of
the official aLRPLoss repository) equal those of the official per-positive loop
(:func:`rsloss_d2.losses.reference.ap_loss_reference`) up to float rounding. The interpolated
precision "max over the positives visited so far in ascending logit order" is a cumulative max;
all sums of the smoothed step go through sorted breakpoints and prefix sums (:mod:`._step_sums`),
a fixed, small number of batched operations.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import compiled
from ._step_sums import NegativeStepSums, find_positives, no_autocast, prepare_inputs

__all__ = ["ap_loss", "APLossFunction"]


class APLossFunction(torch.autograd.Function):
    """Autograd Function of AP Loss: ``forward(s, t, delta, num_positives) -> loss``;
    backward = stored gradient × upstream gradient."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, delta: float,
                num_positives: Optional[int] = None):
        with no_autocast(s.device.type):
            loss, grad = _ap_forward(s.detach(), t, delta, num_positives)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def _ap_forward(s: torch.Tensor, t: torch.Tensor, delta: float, num_positives: Optional[int]):
    lib = compiled.library_for(s)
    if lib is not None:
        out = compiled.ap(lib, s, t, delta)
        if out is not None:
            return out
        if num_positives is None:
            raise FloatingPointError("ap_loss: the logits contain NaN or Inf")
        # a known count reads nothing back: the eager path below turns them into a NaN loss
    neg = t == 0
    pos_idx, guard = find_positives("ap_loss", s, t == 1, num_positives)
    num_fg = pos_idx.numel()
    if num_fg == 0:
        return (s.new_zeros(()) if guard is None else guard), torch.zeros_like(s)
    dtype = s.dtype
    pairs = NegativeStepSums(s, neg, pos_idx, delta, 4, sanitize=guard is not None)
    fg_s = pairs.fg_s
    positives = torch.stack([pairs.one.expand(num_fg), fg_s])
    sums = pairs.at_centres(positives).to(dtype)  # [N_FP(i), Σ_j H(x_ij)] (j ∋ i)
    # rank⁺(i) = 1 + Σ_{j≠i} H(x_ij) (the self term is H(0) = 1/2); rank = rank⁺ + N_FP
    rank_pos = sums[1] + 0.5
    rank = rank_pos + sums[0]
    prec = rank_pos / rank
    # Interpolation: p̂(i) = max prec over the positives up to i in ascending logit order. Tied
    # logits have identical prec, so the tie order does not matter.
    order = torch.argsort(fg_s, stable=True)
    interp = torch.empty_like(prec).index_copy_(0, order, torch.cummax(prec[order], 0).values)
    # The official loop takes the first branch iff max_prec (before i) ≤ prec(i) ⇔ p̂(i) == prec(i)
    # and then passes 1/rank(i) to the negatives, else (1 − p̂(i))/(1 − prec(i)) / rank(i).
    miss = 1 - torch.stack([interp, prec])
    factor = torch.where(interp == prec, 1.0, miss[0] / miss[1])
    grad = pairs.at_points(factor / rank, 1.0 / num_fg, dtype)
    grad.index_add_(0, pos_idx, miss[0], alpha=-1.0 / num_fg)  # −(1 − p̂(i)) / |P|
    loss = miss[0].mean()  # 1 − mean p̂(i)
    if guard is not None:
        loss = loss + guard
    return loss, grad


def ap_loss(logits: torch.Tensor, targets: torch.Tensor, delta: float = 1.0,
            num_positives: Optional[int] = None) -> torch.Tensor:
    """AP Loss with interpolated precision (Chen et al. 2019, Eq. 5–9; official identity update /
    error-driven update).

    Args:
        logits: any shape; fp16/bf16/fp32 computed in fp32 (also under autocast), fp64 in fp64.
        targets: same number of elements; ``1`` positive, ``0`` negative, anything else (−1)
            ignored.
        delta: δ > 0 of the smoothed step.
        num_positives: optional number of positives (``(targets == 1).sum()``) as a Python int:
            nothing is then read back from the device; NaN/Inf logits give NaN instead of
            raising.

    Returns:
        scalar ``1 − mean_i p̂(i)`` in the compute dtype; its gradient is the official one
        (positives −(1 − p̂(i))/|P|, negatives Σ_i H(x_ij)/rank(i) · interpolation factor / |P|).
        Without positives: zero attached to the graph with zero gradient.

    Raises:
        FloatingPointError: NaN/Inf in ``logits`` (``num_positives`` not given).
    """
    if not delta > 0:
        raise ValueError(f"ap_loss: delta must be > 0, got {delta}")
    with no_autocast(logits.device.type):
        s, t = prepare_inputs("ap_loss", logits, targets)
        return APLossFunction.apply(s, t, float(delta), num_positives)
