"""SLOW reference implementations: the official per-positive loops, transcribed from the papers.

These functions are NOT meant for training. They follow the official algorithm line by line
(the ``forward`` of ``RankSort``, ``aLRPLoss`` and ``APLoss`` in
``mmdet/models/losses/ranking_losses.py`` of the official RankSortLoss / aLRPLoss repositories; RS Loss paper Sec. 3, aLRP Loss paper
Sec. 4 and Alg. 1, AP Loss paper Sec. 3 and Alg. 1): loop over the positives in ascending
order of logit, compare each one with every relevant negative and every positive, and build the
identity-update gradient as the official ``forward`` does. They are O(P·N) work in P Python
iterations, exactly the cost the fast implementations in this package avoid.

They exist for two purposes only:

* the tests (``tests/losses``) compare the fast losses to them, values and gradients, in float64;
* ``tools/benchmarks/benchmark_losses.py`` times them as "the official algorithm".

Every function works in the dtype and on the device of ``logits`` (no autocast handling, no
finite-check) and returns plain tensors, no autograd graph. ``max_positives`` lets the benchmark
run only the first ``k`` iterations of the loop (in the official ascending order) to estimate the
time of the full loop; the returned numbers are then meaningless.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["rank_sort_loss_reference", "alrp_loss_reference", "ap_loss_reference"]


def _step(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Smoothed step H(x) = clamp(x / (2δ) + 0.5, 0, 1) (RS Loss paper, Eq. 2); δ = 0: the hard
    step 1[x ≥ 0]."""
    if delta > 0:
        return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)
    return (x >= 0).to(x.dtype)


def rank_sort_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    delta: float = 0.5,
    eps: float = 1e-10,
    max_positives: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Official RS Loss forward (RS Loss paper Sec. 3) as a per-positive loop.

    Returns a dict with ``loss_rank``, ``loss_sort`` (scalars) and ``grad`` (flat, same length as
    ``logits.numel()``: the identity-update gradient, already divided by |P|).
    """
    s = logits.detach().flatten()
    t = targets.detach().flatten().to(s.dtype)
    grad = torch.zeros_like(s)
    fg = t > 0
    zero = s.new_zeros(())
    if not bool(fg.any()):
        return {"loss_rank": zero, "loss_sort": zero.clone(), "grad": grad}
    fg_s, fg_t = s[fg], t[fg]
    num_fg = fg_s.numel()
    relevant_bg = (t == 0) & (s >= fg_s.min() - delta)
    bg_s = s[relevant_bg]
    bg_grad = torch.zeros_like(bg_s)
    fg_grad = torch.zeros_like(fg_s)
    ranking_error = torch.zeros_like(fg_s)
    sorting_error = torch.zeros_like(fg_s)
    order = torch.argsort(fg_s)
    if max_positives is not None:
        order = order[:max_positives]
    for ii in order.tolist():
        fg_rel = _step(fg_s - fg_s[ii], delta)  # includes ii itself (H(0) = 0.5, or 1 if δ = 0)
        bg_rel = _step(bg_s - fg_s[ii], delta)
        rank_pos = fg_rel.sum()
        fp_num = bg_rel.sum()
        rank = rank_pos + fp_num
        ranking_error[ii] = fp_num / rank
        current_sorting_error = (fg_rel * (1 - fg_t)).sum() / rank_pos
        iou_relations = fg_t >= fg_t[ii]
        target_sorted = iou_relations * fg_rel
        target_sorting_error = (target_sorted * (1 - fg_t)).sum() / target_sorted.sum()
        sorting_error[ii] = current_sorting_error - target_sorting_error
        if fp_num > eps:
            fg_grad[ii] -= ranking_error[ii]
            bg_grad += bg_rel * (ranking_error[ii] / fp_num)
        missorted = (~iou_relations) * fg_rel
        sorting_pmf_denom = missorted.sum()
        if sorting_pmf_denom > eps:
            fg_grad[ii] -= sorting_error[ii]
            fg_grad += missorted * (sorting_error[ii] / sorting_pmf_denom)
    grad[fg] = fg_grad / num_fg
    grad[relevant_bg] = bg_grad / num_fg
    return {"loss_rank": ranking_error.mean(), "loss_sort": sorting_error.mean(), "grad": grad}


def alrp_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loc_errors: torch.Tensor,
    delta: float = 1.0,
    eps: float = 1e-5,
    max_positives: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Official aLRP Loss (aLRP Loss paper Sec. 4, Alg. 1) as a per-positive loop.

    ``loc_errors``: (P,) localisation errors of the positives, in the order of
    ``logits.flatten()[targets.flatten() == 1]``. Returns ``loss_cls``, ``loss_loc``, ``grad``
    (flat identity-update gradient w.r.t. the logits), ``rank`` (P,) and ``order`` (ascending
    argsort of the positive logits, stable) .
    """
    s = logits.detach().flatten()
    t = targets.detach().flatten()
    grad = torch.zeros_like(s)
    fg = t == 1
    zero = s.new_zeros(())
    if not bool(fg.any()):
        return {"loss_cls": zero, "loss_loc": zero.clone(), "grad": grad,
                "rank": s.new_zeros(0), "order": torch.zeros(0, dtype=torch.long, device=s.device)}
    loc = loc_errors.detach().flatten().to(s.dtype)
    fg_s = s[fg]
    num_fg = fg_s.numel()
    relevant_bg = (t == 0) & (s >= fg_s.min() - delta)
    bg_s = s[relevant_bg]
    bg_grad = torch.zeros_like(bg_s)
    fg_grad = torch.zeros_like(fg_s)
    rank = torch.zeros_like(fg_s)
    prec = torch.zeros_like(fg_s)
    order = torch.argsort(fg_s, stable=True)
    loop_order = order if max_positives is None else order[:max_positives]
    for ii in loop_order.tolist():
        fg_rel = _step(fg_s - fg_s[ii], delta)
        fg_rel[ii] = 0  # the self term is replaced by the 1 of rank_pos
        bg_rel = _step(bg_s - fg_s[ii], delta)
        rank_pos = 1 + fg_rel.sum()
        fp_num = bg_rel.sum()
        rank[ii] = rank_pos + fp_num
        prec[ii] = rank_pos / rank[ii]
        if fp_num > eps:
            fg_grad[ii] = -((fg_rel * loc).sum() + fp_num) / rank[ii]
            bg_grad += bg_rel * (-fg_grad[ii] / fp_num)
    grad[fg] = fg_grad
    grad[relevant_bg] = bg_grad
    grad /= num_fg
    loss_cls = 1 - prec.mean()
    # Localisation component (aLRP Loss paper, Eq. 12): positives by descending logit,
    # cumulative error / rank.
    desc = order.flip(0)
    loss_loc = (torch.cumsum(loc[desc], 0) / rank[desc]).mean()
    return {"loss_cls": loss_cls, "loss_loc": loss_loc, "grad": grad, "rank": rank, "order": order}


def ap_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    delta: float = 1.0,
    max_positives: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Official AP Loss (AP Loss paper Sec. 3, Alg. 1) as a per-positive loop with interpolation.

    Returns ``loss`` and ``grad`` (flat identity-update gradient w.r.t. the logits).
    """
    s = logits.detach().flatten()
    t = targets.detach().flatten()
    grad = torch.zeros_like(s)
    fg = t == 1
    if not bool(fg.any()):
        return {"loss": s.new_zeros(()), "grad": grad}
    fg_s = s[fg]
    num_fg = fg_s.numel()
    relevant_bg = (t == 0) & (s >= fg_s.min() - delta)
    bg_s = s[relevant_bg]
    bg_grad = torch.zeros_like(bg_s)
    fg_grad = torch.zeros_like(fg_s)
    prec = torch.zeros_like(fg_s)
    max_prec = 0.0
    order = torch.argsort(fg_s, stable=True)
    if max_positives is not None:
        order = order[:max_positives]
    for ii in order.tolist():
        fg_rel = _step(fg_s - fg_s[ii], delta)
        fg_rel[ii] = 0
        bg_rel = _step(bg_s - fg_s[ii], delta)
        rank_pos = 1 + fg_rel.sum()
        fp_num = bg_rel.sum()
        rank = rank_pos + fp_num
        current_prec = rank_pos / rank
        if max_prec <= current_prec:
            max_prec = current_prec
            bg_grad += bg_rel / rank
        else:
            bg_grad += (bg_rel / rank) * ((1 - max_prec) / (1 - current_prec))
        fg_grad[ii] = -(1 - max_prec)
        prec[ii] = max_prec
    grad[fg] = fg_grad
    grad[relevant_bg] = bg_grad
    grad /= num_fg
    return {"loss": 1 - prec.mean(), "grad": grad}
