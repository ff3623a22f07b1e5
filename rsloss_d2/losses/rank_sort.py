"""Rank & Sort (RS) Loss (Oksuz et al., ICCV 2021), the official algorithm without its loop.

Values and the identity-update gradient (paper Sec. 3–4, Eq. 6–12; ``RankSort`` in
``mmdet/models/losses/ranking_losses.py`` of the official RankSortLoss repository) equal those of
the official per-positive loop (:func:`rsloss_d2.losses.reference.rank_sort_loss_reference`) up
to float rounding. The positive–negative interactions are summed through sorted breakpoints and
prefix sums (:mod:`._step_sums`), O(N + P log P); the positive–positive part (rank⁺, the sorting
errors and their gradient) is one dense P×P pass up to ``DENSE_MAX_POSITIVES`` positives and,
above, sorted prefix sums plus a divide and conquer over the IoU order
(:func:`._step_sums.ordered_step_sums`, O(P log² P), no P×P matrix).

Forward + backward is a fixed, small number of batched operations whatever P and N (up to
``DENSE_MAX_POSITIVES``), with one host read (none when the caller passes ``num_positives``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import compiled
from ._step_sums import (
    NegativeStepSums,
    StepBins,
    find_positives,
    no_autocast,
    ordered_step_sums,
    prepare_inputs,
    step_sums_over_points,
)

__all__ = ["rank_sort_loss", "RankSortFunction"]

_RS_EPS = 1e-10  # official eps of the "N_FP(i) > eps" and "D(i) > eps" tests

# Up to this many positives the positive–positive part is one dense P×P computation (three P×P
# buffers); above it, sorted prefix sums and a divide and conquer over the IoU order.
DENSE_MAX_POSITIVES = 2048


def _positive_pair_stats(
    fg_s: torch.Tensor, fg_y: torch.Tensor, delta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same as :func:`_positive_dense_stats` without any P×P matrix, O(P log² P).

    rank⁺(i) and Σ_j H(x_ij) y_j are plain step sums over the positives; the sums over the
    positives with a lower IoU (D(i) and Σ_{y_j < y_i} H(x_ij) y_j) and the sorting gradient the
    lower-IoU positives receive are dominance step sums (:func:`ordered_step_sums`).
    """
    bins = StepBins(fg_s, delta)
    y64 = fg_y.to(torch.float64)
    weights = torch.stack([torch.ones_like(y64), y64])
    total = step_sums_over_points(bins, fg_s, weights)  # rank⁺(i), Σ_j H y_j
    lower = ordered_step_sums(y64, fg_s, weights, y64, fg_s, delta, point_minus_query=True)
    miss = lower[0]  # D(i)
    err = (total[1] - lower[1]) / (total[0] - lower[0]) - total[1] / total[0]  # ℓ_S − ℓ*_S

    def received(coef: torch.Tensor) -> torch.Tensor:
        # positive j receives Σ_{i: y_i > y_j} coef_i H(s_j − s_i)
        return ordered_step_sums(-y64, fg_s, coef[None], -y64, fg_s, delta,
                                 point_minus_query=False)[0]

    dtype = fg_s.dtype
    return total[0].to(dtype), miss.to(dtype), err.to(dtype), received


def _positive_dense_stats(
    fg_s: torch.Tensor, fg_y: torch.Tensor, delta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense positive–positive sums of RS Loss (paper Eq. 8–10).

    Args:
        fg_s: (P,) logits of the positives.  fg_y: (P,) their IoUs in (0, 1].

    Returns:
        ``Σ_j H(s_j − s_i)`` and ``Σ_j H(s_j − s_i) y_j``, each (3, P): over the j with
        y_j ≥ y_i, with y_j < y_i and over all positives (self term included), and ``h_low``
        (P, P), ``H(s_j − s_i) 1[y_j < y_i]`` (row i, column j).
    """
    num = fg_s.numel()
    buf = fg_s.new_empty(3, num, num)  # [H·1[y_j ≥ y_i], H·1[y_j < y_i], H]
    h = buf[2]
    if delta > 0:
        torch.sub(fg_s[None, :], fg_s[:, None], out=h).mul_(0.5 / delta).add_(0.5).clamp_(0, 1)
    else:
        h.copy_(fg_s[None, :] >= fg_s[:, None])
    torch.mul(h, fg_y[None, :] < fg_y[:, None], out=buf[1])
    torch.sub(h, buf[1], out=buf[0])  # exact: h − h or h − 0
    return buf.sum(2), torch.matmul(buf, fg_y), buf[1]


class RankSortFunction(torch.autograd.Function):
    """Autograd Function of RS Loss: forward computes both values and the full gradient.

    ``forward(s, t, delta, num_positives) -> (loss_rank, loss_sort)`` with ``s`` (M,) flat
    logits in the compute dtype and ``t`` (M,) flat targets. ``backward`` multiplies the stored
    identity-update gradient by the upstream gradient of ``loss_rank`` only; the upstream
    gradient of ``loss_sort`` is ignored, as in the official code.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, delta: float,
                num_positives: Optional[int] = None):
        with no_autocast(s.device.type):
            loss_rank, loss_sort, grad = _rank_sort_forward(s.detach(), t, delta, num_positives)
        ctx.save_for_backward(grad)
        return loss_rank, loss_sort

    @staticmethod
    def backward(ctx, grad_rank, grad_sort):  # grad_sort is ignored on purpose
        (grad,) = ctx.saved_tensors
        return grad * grad_rank, None, None, None


def _rank_sort_forward(s: torch.Tensor, t: torch.Tensor, delta: float,
                       num_positives: Optional[int]):
    lib = compiled.library_for(s)
    if lib is not None:
        out = compiled.rank_sort(lib, s, t, delta, _RS_EPS)
        if out is not None:
            return out
        if num_positives is None:
            raise FloatingPointError("rank_sort_loss: the logits contain NaN or Inf")
        # a known count reads nothing back: the eager path below turns them into NaN losses
    neg = t == 0
    pos_idx, guard = find_positives("rank_sort_loss", s, t > 0, num_positives)
    num_fg = pos_idx.numel()
    dtype = s.dtype
    if num_fg == 0:
        zero = s.new_zeros(()) if guard is None else guard
        return zero, zero.clone(), torch.zeros_like(s)
    # Positive–negative part (Eq. 7): N_FP(i) = Σ_{j∈N} H(s_j − s_i) through the breakpoints.
    pairs = NegativeStepSums(s, neg, pos_idx, delta, 2, sanitize=guard is not None)
    fg_s = pairs.fg_s
    fg_y = t.index_select(0, pos_idx).to(dtype)
    fp = pairs.at_centres()[0].to(dtype)
    if num_fg <= DENSE_MAX_POSITIVES:
        sums, sums_y, h_low = _positive_dense_stats(fg_s, fg_y, delta)
        ratios = sums_y[0::2] / sums[0::2]  # Σ_{A(i)} H y / Σ_{A(i)} H, Σ H y / rank⁺
        rank_pos, miss = sums[2], sums[1]  # rank⁺(i), D(i)
        sort_err = ratios[0] - ratios[1]  # e_S(i) = ℓ_S(i) − ℓ*_S(i)
        received = None
    else:
        rank_pos, miss, sort_err, received = _positive_pair_stats(fg_s, fg_y, delta)
    rank_err = fp / (rank_pos + fp)  # ℓ_R(i)
    errors = torch.stack([sort_err, rank_err])
    denoms = torch.stack([miss, fp]).clamp_min_(_RS_EPS)
    steps = errors * (denoms > _RS_EPS)  # the errors of the positives that take a step
    coef = steps / denoms  # [e_S(i)/D(i), ℓ_R(i)/N_FP(i)] where they do, else 0
    # Gradient of the positives (Eq. 11–12): −e_S(i) − ℓ_R(i) (where they step), plus what the
    # higher-IoU positives pass on to the lower ones ranked above them; everything / |P|.
    if received is None:
        fg_grad = torch.addmv(steps.sum(0), h_low.T, coef[0], beta=-1)
    else:
        fg_grad = received(coef[0]).to(dtype) - steps.sum(0)
    grad = pairs.at_points(coef[1], 1.0 / num_fg, dtype)
    grad.index_add_(0, pos_idx, fg_grad, alpha=1.0 / num_fg)
    losses = errors.mean(1)
    if guard is not None:
        losses = losses + guard
    return losses[1], losses[0], grad


def rank_sort_loss(
    logits: torch.Tensor, targets: torch.Tensor, delta: float = 0.5,
    num_positives: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank & Sort Loss (Oksuz et al. 2021, Eq. 6–12, official identity update).

    Args:
        logits: any shape (typically ``(num_predictions, C)`` of the whole per-GPU batch); fp16,
            bf16 and fp32 are computed in fp32 (also under ``torch.autocast``), fp64 in fp64.
        targets: same number of elements. ``> 0``: positive, the value in (0, 1] (e.g. the IoU)
            is its sorting target; ``== 0``: negative; ``< 0``: ignored (zero gradient).
        delta: δ of the smoothed step H(x) = clamp(x/(2δ) + 1/2, 0, 1); δ = 0 gives the official
            hard step 1[x ≥ 0] (H(0) = 1).
        num_positives: optional number of positives (``(targets > 0).sum()``) when the caller
            already knows it as a Python int: the loss then reads nothing back from the device
            (no synchronisation); NaN/Inf logits then give NaN losses instead of raising.

    Returns:
        ``(loss_rank, loss_sort)``, scalars in the compute dtype: L_rank = mean ℓ_R(i),
        L_sort = mean (ℓ_S(i) − ℓ*_S(i)). The whole identity-update gradient (ranking + sorting,
        divided by |P|) is attached to ``loss_rank``; the gradient of ``loss_sort`` is ignored, so
        ``(loss_rank + loss_sort).backward()`` gives that gradient once, and a weight on
        ``loss_sort`` has no effect (official behaviour). Without positives both are zeros
        attached to the graph with zero gradient.

    Raises:
        FloatingPointError: NaN/Inf in ``logits`` (when ``num_positives`` is not given).
    """
    if delta < 0:
        raise ValueError(f"rank_sort_loss: delta must be >= 0, got {delta}")
    with no_autocast(logits.device.type):
        s, t = prepare_inputs("rank_sort_loss", logits, targets)
        return RankSortFunction.apply(s, t, float(delta), num_positives)
