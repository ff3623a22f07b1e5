"""Rank & Sort (RS) Loss (Oksuz et al., ICCV 2021), the official algorithm without its loop.

Spec: ``shared/spec/ranking_losses.md`` §2. Values and the identity-update gradient equal those of
the official per-positive loop (:func:`rsloss_d2.losses.reference.rank_sort_loss_reference`) up to
float rounding. The positive–negative interactions are summed through sorted breakpoints and
prefix sums (:mod:`._step_sums`), O(N + P log P); the positive–positive part (rank⁺, the sorting
errors and their gradient) is a dense P×P computation in row blocks up to
``DENSE_MAX_POSITIVES`` positives and, above, sorted prefix sums plus a divide and conquer over
the IoU order (:func:`._step_sums.ordered_step_sums`, O(P log² P), no P×P matrix).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ._step_sums import (
    PointBins,
    StepBins,
    no_autocast,
    ordered_step_sums,
    positive_indices,
    prepare_inputs,
    row_blocks,
    step_sums_over_points,
)

__all__ = ["rank_sort_loss", "RankSortFunction"]

_RS_EPS = 1e-10  # official eps of the "N_FP(i) > eps" and "D(i) > eps" tests (spec §2.2)


# Up to this many positives the positive–positive part is computed densely (P×P in row
# blocks); above it, by sorted prefix sums and a divide and conquer over the IoU order.
DENSE_MAX_POSITIVES = 1024
_DENSE_BLOCK_ELEMENTS = 1 << 20  # rows per block: bounds the temporaries (4 MiB in fp32)


def _positive_pair_stats(
    fg_s: torch.Tensor, fg_y: torch.Tensor, delta: float, bins: StepBins
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same as :func:`_positive_block_stats` without any P×P matrix, O(P log² P).

    rank⁺(i) and Σ_j H(x_ij)(1 − y_j) are plain step sums over the positives; the sums over
    the positives with a lower IoU (D(i) and Σ_{y_j < y_i} H(x_ij)(1 − y_j)) and the sorting
    gradient the lower-IoU positives receive are dominance step sums (:func:`ordered_step_sums`).
    Sums of A(i) = {y_j ≥ y_i} are totals minus lower parts, in float64 (no cancellation issue:
    Σ_{A(i)} H ≥ H(0)).
    """
    y64 = fg_y.to(torch.float64)
    weights = torch.stack([torch.ones_like(y64), 1 - y64])
    total = step_sums_over_points(bins, fg_s, weights)  # rank⁺(i), Σ_j H (1 − y_j)
    lower = ordered_step_sums(y64, fg_s, weights, y64, fg_s, delta, point_minus_query=True)
    miss = lower[0]  # D(i)
    current = total[1] / total[0]  # ℓ_S(i)
    target = (total[1] - lower[1]) / (total[0] - lower[0])  # ℓ*_S(i)
    err = current - target
    step = miss > _RS_EPS
    zero = torch.zeros_like(err)
    coef = torch.where(step, err / miss.clamp_min(_RS_EPS), zero)
    # positive j receives Σ_{i: y_i > y_j} coef_i H(s_j − s_i): sources ordered by −y
    received = ordered_step_sums(-y64, fg_s, coef[None], -y64, fg_s, delta,
                                 point_minus_query=False)[0]
    sort_grad = received - torch.where(step, err, zero)
    dtype = fg_s.dtype
    return total[0].to(dtype), err.to(dtype), sort_grad.to(dtype)


def _positive_block_stats(
    fg_s: torch.Tensor, fg_y: torch.Tensor, delta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense positive–positive part of RS Loss (spec §2.1–2.2), in row blocks.

    Args:
        fg_s: (P,) logits of the positives.  fg_y: (P,) their sorting targets (IoUs) in (0, 1].

    Returns:
        ``rank_pos`` (P,) = Σ_{j∈P} H(s_j − s_i) (self term included),
        ``sort_err`` (P,) = e_S(i) = ℓ_S(i) − ℓ*_S(i),
        ``sort_grad`` (P,) the sorting part of g_fg (before the division by |P|):
        ``−e_S(i)·1[D(i) > eps] + Σ_{i: y_j < y_i, D(i) > eps} e_S(i) H(s_j − s_i) / D(i)``.
    """
    num_fg = fg_s.numel()
    one_minus_y = 1 - fg_y
    rank_pos = torch.empty_like(fg_s)
    sort_err = torch.empty_like(fg_s)
    sort_grad = torch.zeros_like(fg_s)
    zero = torch.zeros((), dtype=fg_s.dtype, device=fg_s.device)
    for rows in row_blocks(num_fg, num_fg, _DENSE_BLOCK_ELEMENTS):
        if delta > 0:
            h = (fg_s[None, :] - fg_s[rows, None]).div_(2 * delta).add_(0.5).clamp_(0, 1)  # H(x_ij)
        else:
            h = (fg_s[None, :] >= fg_s[rows, None]).to(fg_s.dtype)
        lower = fg_y[None, :] < fg_y[rows, None]  # y_j < y_i: the "missorted" candidates
        h_low = torch.where(lower, h, zero)  # H(x_ij) 1[y_j < y_i]
        h_ge = h.sub_(h_low)  # H(x_ij) 1[y_j ≥ y_i], j ∈ A(i)  (exact: h − h or h − 0)
        del lower
        miss = h_low.sum(1)  # D(i)
        ge = h_ge.sum(1)  # Σ_{A(i)} H ≥ H(0) > 0
        ge_err = h_ge @ one_minus_y
        rp = ge + miss  # rank⁺(i) (sums of non-negative terms: no cancellation)
        current = (ge_err + h_low @ one_minus_y) / rp  # ℓ_S(i)
        err = current - ge_err / ge  # e_S(i) = ℓ_S(i) − ℓ*_S(i)
        step = miss > _RS_EPS
        coef = torch.where(step, err / miss.clamp_min(_RS_EPS), zero)
        sort_grad[rows] -= torch.where(step, err, zero)
        sort_grad += coef @ h_low  # column j receives Σ_i coef_i H(x_ij) 1[y_j < y_i]
        rank_pos[rows] = rp
        sort_err[rows] = err
    return rank_pos, sort_err, sort_grad


class RankSortFunction(torch.autograd.Function):
    """Autograd Function of RS Loss: forward computes both values and the full gradient.

    ``forward(s, t, delta) -> (loss_rank, loss_sort)`` with ``s`` (M,) flat logits in the compute
    dtype and ``t`` (M,) flat targets. ``backward`` multiplies the stored identity-update gradient
    by the upstream gradient of ``loss_rank`` only; the upstream gradient of ``loss_sort`` is
    ignored, as in the official code (spec §2.3).
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, delta: float):
        with no_autocast(s.device.type):
            loss_rank, loss_sort, grad = _rank_sort_forward(s.detach(), t, delta)
        ctx.save_for_backward(grad)
        return loss_rank, loss_sort

    @staticmethod
    def backward(ctx, grad_rank, grad_sort):  # grad_sort is ignored on purpose (spec §2.3)
        (grad,) = ctx.saved_tensors
        return grad * grad_rank, None, None


def _rank_sort_forward(s: torch.Tensor, t: torch.Tensor, delta: float):
    pos = t > 0
    neg = t == 0
    pos_idx = positive_indices("rank_sort_loss", s, pos)  # the one host read (+ NaN/Inf check)
    num_fg = pos_idx.numel()
    if num_fg == 0:
        zero = s.new_zeros(())
        return zero, zero.clone(), torch.zeros_like(s)
    fg_s = s[pos_idx]
    fg_y = t[pos_idx].to(s.dtype)
    # Positive–negative part (spec §2.1): N_FP(i) = Σ_{j∈N} H(s_j − s_i) through the breakpoints.
    bins = StepBins(fg_s, delta)
    negatives = PointBins(bins, s, neg)
    fp_num = negatives.sums_at_centers().to(s.dtype)
    if num_fg <= DENSE_MAX_POSITIVES:
        rank_pos, sort_err, sort_grad = _positive_block_stats(fg_s, fg_y, delta)
    else:
        rank_pos, sort_err, sort_grad = _positive_pair_stats(fg_s, fg_y, delta, bins)
    rank = rank_pos + fp_num
    rank_err = fp_num / rank  # ℓ_R(i)
    ranking_step = fp_num > _RS_EPS
    # Ranking part of the gradient (spec §2.2 step 1), then everything divided by |P|.
    fg_grad = sort_grad - torch.where(ranking_step, rank_err, torch.zeros_like(rank_err))
    neg_weight = torch.where(
        ranking_step, rank_err / fp_num.clamp_min(_RS_EPS), torch.zeros_like(rank_err)
    ) / num_fg
    alpha, beta = bins.tables(neg_weight)
    grad = negatives.evaluate(alpha, beta)
    grad[pos_idx] = fg_grad / num_fg
    return rank_err.mean(), sort_err.mean(), grad


def rank_sort_loss(
    logits: torch.Tensor, targets: torch.Tensor, delta: float = 0.5
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank & Sort Loss (spec §2; Oksuz et al. 2021, Eq. 6–12, official identity update).

    Args:
        logits: any shape (typically ``(num_predictions, C)`` of the whole per-GPU batch); fp16,
            bf16 and fp32 are computed in fp32 (also under ``torch.autocast``), fp64 in fp64.
        targets: same number of elements. ``> 0``: positive, the value in (0, 1] (e.g. the IoU)
            is its sorting target; ``== 0``: negative; ``< 0``: ignored (zero gradient).
        delta: δ of the smoothed step H(x) = clamp(x/(2δ) + 1/2, 0, 1); δ = 0 gives the official
            hard step 1[x ≥ 0] (H(0) = 1).

    Returns:
        ``(loss_rank, loss_sort)``, scalars in the compute dtype: L_rank = mean ℓ_R(i),
        L_sort = mean (ℓ_S(i) − ℓ*_S(i)). The whole identity-update gradient (ranking + sorting,
        divided by |P|) is attached to ``loss_rank``; the gradient of ``loss_sort`` is ignored, so
        ``(loss_rank + loss_sort).backward()`` gives that gradient once, and a weight on
        ``loss_sort`` has no effect (official behaviour, spec §2.3). Without positives both are
        zeros attached to the graph with zero gradient.

    Raises:
        FloatingPointError: NaN/Inf in ``logits``.
    """
    if delta < 0:
        raise ValueError(f"rank_sort_loss: delta must be >= 0, got {delta}")
    with no_autocast(logits.device.type):
        s, t = prepare_inputs("rank_sort_loss", logits, targets)
        return RankSortFunction.apply(s, t, float(delta))
