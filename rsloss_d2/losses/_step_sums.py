"""Sums of the smoothed step function without a P×N matrix (shared by RS, aLRP and AP Loss).

All three ranking losses need, for the positives ``c_i`` (the "centres") and a set of points
``x_j`` (the negatives, or the positives themselves),

* (A) for every centre:  ``Σ_j u_j · H(x_j − c_i)``   (e.g. N_FP(i) with u = 1),
* (B) for every point:   ``Σ_i w_i · H(x_j − c_i)``   (the gradient a negative receives),

with the smoothed step H(x) = clamp(x/(2δ) + 1/2, 0, 1) (spec §1.4; δ = 0: the hard step
1[x ≥ 0]). H(x − c) is 0 below ``c − δ``, 1 from ``c + δ`` on and linear in between, so both sums
are piecewise linear in their free variable with kinks only at the 2P "breakpoints" ``c_i ± δ``.
Cut the real line at the sorted breakpoints into 2P + 1 bins; bin k holds the x with exactly k
breakpoints ≤ x (``searchsorted(bp, x, right=True)``). Then

* (A) needs only the per-bin totals ``Σ u_j`` and ``Σ u_j x_j``: the points in bins ≥ r(c_i + δ)
  count fully, those in bins [r(c_i − δ), r(c_i + δ)) linearly, via suffix sums over the bins;
* (B) is ``α[k] + β[k] · x`` on bin k, with α, β built from difference arrays over the bins.

Everything is O((P + N) log P); the bin totals and tables are accumulated in float64 (the suffix
sums subtract totals over up to 10^6 points) and only the final values are cast back.

For the many negatives (10^5–10^6) a binary search per element is the dominant cost, so
:class:`PointBins` first maps every element to one of ~16 cells per breakpoint of a *uniform*
grid over the breakpoints' range with one multiply (a monotone map, so a cell that contains no
breakpoint lies entirely inside one bin and its bin is known from the cell), and runs the exact
binary search only for the few elements that fall into a cell holding a breakpoint. The result is
exact: no approximation is made anywhere.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

__all__ = ["StepBins", "PointBins", "prepare_inputs", "no_autocast", "row_blocks"]


def no_autocast(device_type: str):
    """Context that disables autocast for ``device_type`` (the losses compute in ≥ float32)."""
    try:
        if torch.amp.is_autocast_available(device_type):
            return torch.autocast(device_type=device_type, enabled=False)
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch / odd devices
        pass
    return contextlib.nullcontext()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare_inputs(
    name: str, logits: torch.Tensor, targets: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flatten, upcast and check the inputs of a ranking loss.

    Args:
        name: loss name used in error messages.
        logits: any shape, floating point.
        targets: same number of elements as ``logits``.

    Returns:
        ``(s, t)``: ``s`` the flat logits in the compute dtype (still attached to the graph, the
        cast is differentiable), ``t`` the flat targets (detached, any dtype).

    Raises:
        ValueError: shape mismatch or non-floating logits.
        FloatingPointError: NaN or ±Inf among the logits. This is the one host synchronisation the
            check costs (a fused ``isfinite(...).all()``); the ranking losses need the number of
            positives on the host anyway.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
    if logits.numel() != targets.numel():
        raise ValueError(
            f"{name}: logits and targets must have the same number of elements, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    s = logits.reshape(-1).to(compute_dtype(logits.dtype))
    if not bool(torch.isfinite(s.detach()).all()):
        raise FloatingPointError(f"{name}: the logits contain NaN or Inf")
    return s, targets.detach().reshape(-1)


def row_blocks(rows: int, cols: int, max_elements: int = 1 << 22):
    """Yield ``slice``s over ``rows`` so that each block has at most ~``max_elements`` entries.

    Used to bound the memory of the dense P×P positive–positive part (a loop over blocks of
    positives, never over single positives unless P is huge).
    """
    step = max(1, max_elements // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[k] = Σ_{m ≥ k} x[m]`` with a trailing 0 (length ``len(x) + 1``)."""
    out = torch.zeros(x.numel() + 1, dtype=x.dtype, device=x.device)
    out[:-1] = x.flip(0).cumsum(0).flip(0)
    return out


class StepBins:
    """The bins cut by the breakpoints ``c_i ± δ`` of a set of centres (the positives' logits).

    Args:
        centers: (P,) logits of the positives, P ≥ 1, compute dtype.
        delta: δ ≥ 0 of the smoothed step (δ = 0: hard step 1[x ≥ 0], one breakpoint per centre).
    """

    def __init__(self, centers: torch.Tensor, delta: float):
        self.delta = float(delta)
        self.centers64 = centers.to(torch.float64)
        if self.delta > 0:
            lower = centers - self.delta
            upper = centers + self.delta
            self.bp = torch.cat([lower, upper]).sort().values
            # r(v) = #{breakpoints ≤ v}; a point x lies in a bin ≥ r(v) ⇔ x ≥ v (v a breakpoint).
            self.r_lo = torch.searchsorted(self.bp, lower, right=True)
            self.r_hi = torch.searchsorted(self.bp, upper, right=True)
            self.inv2d = 1.0 / (2.0 * self.delta)
        else:
            self.bp = centers.sort().values
            self.r_lo = self.r_hi = torch.searchsorted(self.bp, centers, right=True)
            self.inv2d = 0.0
        self.num_bins = self.bp.numel() + 1

    def bin_of(self, x: torch.Tensor) -> torch.Tensor:
        """Exact bin index of every point (binary search)."""
        return torch.searchsorted(self.bp, x, right=True)

    def sums_at_centers(
        self, count: torch.Tensor, weight: torch.Tensor, weighted_x: torch.Tensor
    ) -> torch.Tensor:
        """(A): ``Σ_j u_j H(x_j − c_i)`` for every centre, float64 (P,).

        Args:
            count: (num_bins,) number of points per bin (exact integers, any dtype).
            weight: (num_bins,) float64 ``Σ u_j`` per bin.
            weighted_x: (num_bins,) float64 ``Σ u_j x_j`` per bin.
        """
        w_ge = suffix_sum(weight)
        out = w_ge[self.r_hi]  # points at or above c_i + δ: H = 1
        if self.delta > 0:
            c_ge = suffix_sum(count.to(torch.float64))
            n_lin = c_ge[self.r_lo] - c_ge[self.r_hi]  # exact (integers)
            wx_ge = suffix_sum(weighted_x)
            w_lin = w_ge[self.r_lo] - w_ge[self.r_hi]
            wx_lin = wx_ge[self.r_lo] - wx_ge[self.r_hi]
            lin = (wx_lin - self.centers64 * w_lin) * self.inv2d + 0.5 * w_lin
            out = out + torch.where(n_lin > 0, lin, torch.zeros_like(lin))
        return out

    def tables(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B): per-bin ``(α, β)``, float64 (num_bins,), with ``Σ_i w_i H(x − c_i) = α[k] + β[k]x``.

        Args:
            w: (P,) weight of every centre.
        """
        w64 = w.to(torch.float64)
        nb = self.num_bins
        alpha = torch.zeros(nb, dtype=torch.float64, device=w.device)
        alpha.index_add_(0, self.r_hi, w64)  # centres with c_i + δ ≤ x contribute w_i
        if self.delta > 0:
            slope = w64 * self.inv2d
            const = 0.5 * w64 - slope * self.centers64
            beta = torch.zeros_like(alpha)
            beta.index_add_(0, self.r_lo, slope).index_add_(0, self.r_hi, -slope)
            alpha.index_add_(0, self.r_lo, const).index_add_(0, self.r_hi, -const)
            return alpha.cumsum(0), beta.cumsum(0)
        return alpha.cumsum(0), torch.zeros_like(alpha)


class PointBins:
    """Exact bin indices of many points (the negatives), found through a uniform grid.

    Args:
        bins: the breakpoints.
        x: (M,) all flat logits (compute dtype).
        mask: (M,) bool, the points to use (the negatives); the others get value 0 in
            :meth:`evaluate` and are left out of the totals.
        cells_per_breakpoint: grid resolution (cells ≈ this × number of breakpoints).
    """

    def __init__(self, bins: StepBins, x: torch.Tensor, mask: torch.Tensor,
                 cells_per_breakpoint: int = 16):
        self.bins = bins
        bp = bins.bp
        nbp = bp.numel()
        num_cells = int(min(max(cells_per_breakpoint * nbp, 256), 1 << 16))
        lo, hi = bp[0], bp[-1]
        width = (hi - lo).clamp_min(torch.finfo(bp.dtype).tiny)
        self._scale = num_cells / width
        self._offset = lo - width / num_cells  # the breakpoints land in cells 1..num_cells(+1)
        self._max_cell = float(num_cells + 1)
        # Cells 0..num_cells+1 from the grid, one extra "trash" cell for the masked-out elements.
        cells = num_cells + 2
        bp_cell = self._cell(bp)
        bp_per_cell = torch.bincount(bp_cell, minlength=cells)
        # Breakpoints in cells strictly below: the bin of every element of a breakpoint-free cell.
        below = bp_per_cell.cumsum(0) - bp_per_cell
        mixed = bp_per_cell > 0
        trash = cells
        cell = torch.where(mask, self._cell(x), torch.full_like(mask, trash, dtype=torch.long))
        x64 = x.to(torch.float64)
        count_c = torch.bincount(cell, minlength=cells + 1)[:cells]
        sum_c = torch.bincount(cell, weights=x64, minlength=cells + 1)[:cells]
        # Elements in a cell that holds a breakpoint: exact binary search.
        mixed_ext = torch.cat([mixed, mixed.new_zeros(1)])
        self.mixed_idx = mixed_ext[cell].nonzero().squeeze(1)
        self.mixed_x = x[self.mixed_idx]
        self.mixed_bin = bins.bin_of(self.mixed_x)
        nb = bins.num_bins
        pure = ~mixed
        pure_bin = below[pure]
        self.count = torch.zeros(nb, dtype=torch.long, device=x.device)
        self.count.index_add_(0, pure_bin, count_c[pure])
        self.count += torch.bincount(self.mixed_bin, minlength=nb)
        self.sum_x = torch.zeros(nb, dtype=torch.float64, device=x.device)
        self.sum_x.index_add_(0, pure_bin, sum_c[pure])
        self.sum_x += torch.bincount(
            self.mixed_bin, weights=self.mixed_x.to(torch.float64), minlength=nb
        )
        self._cell_ids = cell
        self._below = below
        self._x = x

    def _cell(self, v: torch.Tensor) -> torch.Tensor:
        # A monotone non-decreasing map (correctly rounded sub/mul/clamp, then truncation of
        # non-negative numbers), applied identically to breakpoints and points: a cell with no
        # breakpoint lies strictly between two consecutive breakpoints.
        return ((v - self._offset) * self._scale).clamp_(0.0, self._max_cell).long()

    def sums_at_centers(self) -> torch.Tensor:
        """(A) with unit weights: ``Σ_j H(x_j − c_i)`` over the masked points, float64 (P,)."""
        return self.bins.sums_at_centers(self.count, self.count.to(torch.float64), self.sum_x)

    def evaluate(self, alpha: torch.Tensor, beta: torch.Tensor,
                 out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """(B): ``α[k] + β[k]·x`` for every masked element, 0 elsewhere; (M,) in ``out_dtype``."""
        zero = alpha.new_zeros(1)
        alpha_c = torch.cat([alpha[self._below], zero])
        beta_c = torch.cat([beta[self._below], zero])
        out = alpha_c[self._cell_ids] + beta_c[self._cell_ids] * self._x
        out[self.mixed_idx] = alpha[self.mixed_bin] + beta[self.mixed_bin] * self.mixed_x
        return out.to(out_dtype or self._x.dtype)


def step_sums_over_points(bins: StepBins, x: torch.Tensor, u: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """(A) for a small set of points (e.g. the positives themselves), with weights ``u``."""
    k = bins.bin_of(x)
    nb = bins.num_bins
    x64 = x.to(torch.float64)
    u64 = torch.ones_like(x64) if u is None else u.to(torch.float64)
    count = torch.bincount(k, minlength=nb)
    weight = torch.bincount(k, weights=u64, minlength=nb)
    weighted_x = torch.bincount(k, weights=u64 * x64, minlength=nb)
    return bins.sums_at_centers(count, weight, weighted_x)
