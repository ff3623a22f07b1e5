"""aLRP Loss (Oksuz et al., NeurIPS 2020), the official algorithm without its loop, + self-balance.

Values and the identity-update gradient (paper Sec. 4, Eq. 10–12 and Alg. 1; ``aLRPLoss`` in
``mmdet/models/losses/ranking_losses.py`` of the official aLRPLoss repository) equal those of the
official per-positive loop (:func:`rsloss_d2.losses.reference.alrp_loss_reference`) up to float
rounding. Both the positive–negative and the positive–positive sums of the smoothed step go
through sorted breakpoints and prefix sums (:mod:`._step_sums`), O((P + N) log P) in a fixed,
small number of batched operations; no P×N and no P×P matrix is built.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from . import compiled
from ._step_sums import NegativeStepSums, find_positives, no_autocast, prepare_inputs

__all__ = ["alrp_loss", "ALRPFunction", "ALRPSelfBalance"]

_ALRP_EPS = 1e-5  # official eps of the "N_FP(i) > eps" test


class ALRPFunction(torch.autograd.Function):
    """Autograd Function of the aLRP classification component.

    ``forward(s, t, loc_errors, delta, num_positives) -> (loss_cls, rank, order)``: ``s``/``t``
    flat (M,), ``loc_errors`` (P,) (its values only are used). ``rank`` (P,) and ``order`` (P,)
    (ascending stable argsort of the positive logits) are non-differentiable. ``backward``
    returns the stored identity-update gradient times the upstream gradient of ``loss_cls``,
    nothing for ``loc_errors`` (paper Sec. 4.2).
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, loc_errors: torch.Tensor, delta: float,
                num_positives: Optional[int] = None):
        with no_autocast(s.device.type):
            loss_cls, rank, order, grad = _alrp_forward(
                s.detach(), t, loc_errors.detach(), delta, num_positives)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(rank, order)
        ctx.set_materialize_grads(False)  # no zero gradients made for rank and order
        return loss_cls, rank, order

    @staticmethod
    def backward(ctx, grad_cls, grad_rank, grad_order):
        (grad,) = ctx.saved_tensors
        return None if grad_cls is None else grad * grad_cls, None, None, None, None


def _alrp_forward(s: torch.Tensor, t: torch.Tensor, loc: torch.Tensor, delta: float,
                  num_positives: Optional[int]):
    lib = compiled.library_for(s)
    if lib is not None:
        out = compiled.alrp(lib, s, t, loc, delta, _ALRP_EPS)
        if out is not None:
            return out
        if num_positives is None:
            raise FloatingPointError("alrp_loss: the logits contain NaN or Inf")
        # a known count reads nothing back: the eager path below turns them into a NaN loss
    neg = t == 0
    pos_idx, guard = find_positives("alrp_loss", s, t == 1, num_positives)
    num_fg = pos_idx.numel()
    if loc.numel() != num_fg:
        raise ValueError(
            f"alrp_loss: loc_errors has {loc.numel()} entries for {num_fg} positives"
        )
    if num_fg == 0:
        zero = s.new_zeros(()) if guard is None else guard
        return (zero, s.new_zeros(0), torch.zeros(0, dtype=torch.long, device=s.device),
                torch.zeros_like(s))
    dtype = s.dtype
    pairs = NegativeStepSums(s, neg, pos_idx, delta, 6, sanitize=guard is not None)
    fg_s = pairs.fg_s
    # The positives as points too, with weights 1 and ℓ_loc: Σ_j H(x_ij), Σ_j H(x_ij) ℓ_loc(j).
    positives = torch.stack([pairs.one.expand(num_fg), fg_s, loc, loc * fg_s])
    sums = pairs.at_centres(positives).to(dtype)  # [N_FP, Σ_j H, Σ_j H ℓ_loc] (j ∋ i)
    fp = sums[0]
    # rank(i) = rank⁺(i) + N_FP(i) with rank⁺ = 1 + Σ_{j≠i} H(x_ij) (the self term is H(0) = 1/2)
    rank = torch.add(sums[1], fp).add_(0.5)
    step = fp > _ALRP_EPS
    # −g_i = (Σ_{j≠i} H(x_ij) ℓ_loc(j) + N_FP(i)) / rank(i) where N_FP(i) > eps (Eq. 11)
    pos_grad = torch.add(sums[2], loc, alpha=-0.5).add_(fp).div_(rank).mul_(step)
    grad = pairs.at_points(pos_grad / fp.clamp_min(_ALRP_EPS), 1.0 / num_fg, dtype)
    grad.index_add_(0, pos_idx, pos_grad, alpha=-1.0 / num_fg)
    loss = (fp / rank).mean()  # 1 − mean prec(i)
    if guard is not None:
        loss = loss + guard
    return loss, rank, torch.argsort(fg_s, stable=True), grad


def alrp_loss(
    logits: torch.Tensor, targets: torch.Tensor, loc_errors: torch.Tensor, delta: float = 1.0,
    num_positives: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """aLRP Loss (Oksuz et al. 2020, Eq. 10–12, official identity update).

    Args:
        logits: any shape; fp16/bf16/fp32 computed in fp32 (also under autocast), fp64 in fp64.
        targets: same number of elements; ``1`` positive, ``0`` negative, anything else (−1)
            ignored.
        loc_errors: (P,) localisation error of every positive (e.g. 1 − GIoU), in the order of
            ``logits.flatten()[targets.flatten() == 1]``.
        delta: δ > 0 of the smoothed step.
        num_positives: optional number of positives (``(targets == 1).sum()``) as a Python int:
            nothing is then read back from the device; NaN/Inf logits give NaN instead of
            raising.

    Returns:
        ``(loss_cls, loss_loc)`` scalars in the compute dtype.
        ``loss_cls`` = 1 − mean prec(i); its gradient (identity update, Sec. 4.2) goes to
        ``logits`` only and uses the *values* of ``loc_errors``.
        ``loss_loc`` = (1/|P|) Σ_m (Σ_{q≤m} ℓ_loc(π(q))) / rank(π(m)) over the positives sorted by
        descending logit π (Eq. 12; among equal logits the later one in the flat order comes
        first, i.e. the reverse of a stable ascending argsort), with detached ranks: ordinary
        autograd, so its gradient goes to ``loc_errors`` only. Without positives both are zeros
        attached to the graph (of ``logits`` and ``loc_errors``) with zero gradient.

    Raises:
        FloatingPointError: NaN/Inf in ``logits`` (``num_positives`` not given). ValueError:
        wrong number of ``loc_errors``.
    """
    if not delta > 0:
        raise ValueError(f"alrp_loss: delta must be > 0, got {delta}")
    with no_autocast(logits.device.type):
        s, t = prepare_inputs("alrp_loss", logits, targets)
        loc = loc_errors.reshape(-1).to(s.dtype)
        loss_cls, rank, order = ALRPFunction.apply(s, t, loc, float(delta), num_positives)
        if order.numel() == 0:
            return loss_cls, loc.sum() * 0
        desc = order.flip(0)
        loss_loc = (torch.cumsum(loc[desc], 0) / rank[desc]).mean()
        return loss_cls, loss_loc


class ALRPSelfBalance(nn.Module):
    """Self-balance weight of aLRP Loss (paper Sec. 4.3): ``total = L_cls + weight · L_loc``.

    ``weight`` starts at ``init_weight`` (50). Call :meth:`update` once per training iteration
    with the two *unweighted* losses; their detached values are accumulated on the device (no host
    synchronisation) and after every ``period`` calls
    ``weight = (mean L_loc + mean L_cls) / mean L_loc`` and the accumulators are reset (if the
    mean L_loc is 0, or no iteration of the period counted, the weight is kept).
    ``period`` should be the number of iterations per epoch, derived from dataset size and batch
    size by the caller (the official heads hard-code 3665 / 7330).

    Cross-process behaviour: by default every process keeps its own statistics, like the official
    code, so the weights may differ slightly between GPUs. Pass ``reduce_fn`` to make the weight
    **and** the accumulated sums identical on every process: every :meth:`update` calls it with
    this process's float64 contribution ``[L_cls, L_loc, count]`` (count 1, or 0 for
    ``valid=False``) and accumulates its result, which must be the cross-process sum, e.g.
    ``lambda x: (torch.distributed.all_reduce(x), x)[1]``. Every process must then call
    :meth:`update` at every iteration (``valid=False`` in an iteration without positives: it adds
    nothing to the sums but advances the period counter, so the counters stay in lockstep and the
    collectives match); the weight is the rule above with the means taken over all
    (process, iteration) pairs that had positives. As the sums are identical everywhere, rank 0's
    checkpoint restores them exactly on every process.

    State (``weight``, the sums and the call counter) lives in buffers, so it is saved and
    restored with the model's ``state_dict`` and moves with ``.to(device)``. Note: as a
    submodule of a model wrapped in ``DistributedDataParallel`` with ``broadcast_buffers=True``
    (the default), these buffers are overwritten by rank 0's at every forward, so every process
    then follows rank 0's statistics (identical weights, but computed from rank 0's losses only);
    use ``reduce_fn`` for statistics over all processes.
    """

    def __init__(self, period: int, init_weight: float = 50.0,
                 reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        if period < 1:
            raise ValueError(f"ALRPSelfBalance: period must be >= 1, got {period}")
        self.period = int(period)
        self.init_weight = float(init_weight)
        self.reduce_fn = reduce_fn
        # float32 so that ``loss_loc * weight`` keeps the dtype of a float32 loss.
        self.register_buffer("weight", torch.tensor(float(init_weight), dtype=torch.float32))
        # [Σ L_cls, Σ L_loc, number of calls] since the last update of the weight.
        self.register_buffer("stats", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long))
        self._calls = 0  # host mirror of ``num_calls`` (kept in sync, avoids a sync per step)

    def update(self, loss_cls: torch.Tensor, loss_loc: torch.Tensor,
               valid: bool = True) -> torch.Tensor:
        """Accumulate one iteration; returns the (possibly new) weight (float32 scalar tensor).

        ``valid=False`` (no positives in this iteration; only meaningful with ``reduce_fn``):
        the losses are not accumulated, the period counter still advances.
        """
        dev = self.stats.device
        if valid:
            losses = [torch.as_tensor(x).detach().to(device=dev, dtype=torch.float64).reshape(())
                      for x in (loss_cls, loss_loc)]
            vals = torch.stack(losses + [torch.ones((), dtype=torch.float64, device=dev)])
        else:
            vals = torch.zeros(3, dtype=torch.float64, device=dev)
        if self.reduce_fn is not None:
            vals = self.reduce_fn(vals)
        self.stats += vals
        self._calls += 1
        self.num_calls.fill_(self._calls)
        if self._calls >= self.period:
            stats = self.stats
            mean_cls = stats[0] / stats[2]
            mean_loc = stats[1] / stats[2]
            new = (mean_loc + mean_cls) / mean_loc
            # mean L_loc = 0 (never in practice) would give inf: keep the previous weight then.
            self.weight.copy_(torch.where(mean_loc > 0, new, self.weight.to(new.dtype)))
            self.stats.zero_()
            self._calls = 0
            self.num_calls.zero_()
        return self.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calls = int(self.num_calls)  # one host read at load time only

    def extra_repr(self) -> str:
        return f"period={self.period}, init_weight={self.init_weight}"
