"""Sums of the smoothed step function over sorted breakpoints (shared by RS, aLRP and AP Loss).

All three ranking losses (Oksuz et al. 2021, Sec. 3–4; Oksuz et al. 2020, Sec. 4; Chen et al.
2019, Sec. 3) need, for the positives' logits ``c_i`` (the "centres") and a set of points ``x_j``
(the negatives, or the positives themselves),

* (A) for every centre:  ``Σ_j u_j · H(x_j − c_i)``   (e.g. N_FP(i) with u = 1),
* (B) for every point:   ``Σ_i w_i · H(x_j − c_i)``   (the gradient a negative receives),

with the smoothed step H(x) = clamp(x/(2δ) + 1/2, 0, 1) (RS Loss paper, Eq. 2; δ = 0: the hard
step 1[x ≥ 0]). The official loops (``mmdet/models/losses/ranking_losses.py`` of the RankSortLoss
and aLRPLoss repositories) build these sums one positive at a time, O(P·N).

H(x − c) is 0 below the breakpoint ``c − δ``, 1 from ``c + δ`` on and linear in between, so both
sums are piecewise linear in their free variable with kinks only at the 2P breakpoints. Sort the
breakpoints ``bp``; bin k holds the x with exactly k breakpoints ≤ x
(``searchsorted(bp, x, right=True)``). Then, with ``r(b) = #{bp < b}`` for a breakpoint b, the
points with x < b are exactly those of the bins ≤ r(b) (the bins between r(b) and the last copy of
b are empty), so

* (A) is a difference of prefix sums over the bins of ``Σ u_j`` and ``Σ u_j x_j``, gathered at
  ``r(c − δ)`` and ``r(c + δ)`` (:func:`histogram`, :func:`sums_at_centres`);
* (B) is ``A[k] − B[k]·x`` on bin k, with ``(A, B)`` the prefix sums over the sorted breakpoints of
  the ramps ``w/(2δ)·(relu(x − c + δ) − relu(x − c − δ))`` (:func:`centre_tables`,
  :func:`evaluate`).

Every point is binned once (:func:`point_bins`): one ``searchsorted`` (a few batched operations
whatever P and N), or on the CPU for many points a uniform grid over the breakpoints whose cells
that hold no breakpoint give the bin directly, so only the few points in the other cells are
binary-searched. Sums and tables are accumulated in float64 and cast back at the end; no
approximation is made, the values equal the official loop's up to float rounding. No P×N matrix
and no Python loop over positives or points.

Host reads: :func:`find_positives` reads the number of positives and the finite check of the
logits in one read, or none when the caller passes the number of positives. The CPU grid also
reads its range and the points in breakpoint cells from host memory (no device
synchronisation).

RS Loss also needs sums over the positives *with a lower IoU* (its sorting part): a dense P×P
computation in :mod:`.rank_sort` up to a few thousand positives, above that
:func:`ordered_step_sums`, a divide and conquer over the IoU order, each level one batched sort /
prefix-sum / ``searchsorted`` step (O(P log² P), no P×P matrix).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "no_autocast",
    "compute_dtype",
    "prepare_inputs",
    "find_positives",
    "constant",
    "breakpoints",
    "point_bins",
    "zero_buffers",
    "histogram",
    "table_shape",
    "sums_at_centres",
    "centre_tables",
    "evaluate",
    "NegativeStepSums",
    "counts_per_bin",
    "StepBins",
    "step_sums_over_points",
    "ordered_step_sums",
    "GRID_MIN_POINTS",
]

# On the CPU, from this many logits on the points are binned through a uniform grid: ~15 more
# operations, but torch's CPU searchsorted costs ~60 ns per point. Elsewhere (GPU) one batched
# searchsorted.
GRID_MIN_POINTS = 1 << 12

_CONSTANTS: Dict[tuple, torch.Tensor] = {}


def constant(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor made once per (values, dtype, device) and reused (no per-call
    allocation or host-to-device copy). ``values``: a number or nested tuples of numbers."""
    key = (values, dtype, device)
    out = _CONSTANTS.get(key)
    if out is None:
        if len(_CONSTANTS) > 4096:  # e.g. one per number of positives: keep the cache small
            _CONSTANTS.clear()
        with torch.inference_mode(False), torch.no_grad():
            out = torch.tensor(values, dtype=dtype, device=device)
        _CONSTANTS[key] = out
    return out


def no_autocast(device_type: str):
    """Context that disables autocast for ``device_type`` (the losses compute in ≥ float32)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
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
    """Flatten, upcast and check the shapes of a ranking loss's inputs (no host read).

    Args:
        name: loss name used in error messages.
        logits: any shape, floating point.
        targets: same number of elements as ``logits``.

    Returns:
        ``(s, t)``: ``s`` the flat logits in the compute dtype (still attached to the graph, the
        cast is differentiable), ``t`` the flat targets (detached, any dtype).

    Raises:
        ValueError: shape mismatch or non-floating logits.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
    if logits.numel() != targets.numel():
        raise ValueError(
            f"{name}: logits and targets must have the same number of elements, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    s = logits.reshape(-1).to(compute_dtype(logits.dtype))
    return s, targets.detach().reshape(-1)


def find_positives(
    name: str, s: torch.Tensor, pos: torch.Tensor, num_positives: Optional[int] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Indices of the positives, ascending, with at most one host read.

    Args:
        name: loss name used in error messages.
        s: (M,) flat logits (compute dtype).
        pos: (M,) bool, the positives.
        num_positives: the number of positives if the caller knows it (then nothing is read back
            from the device); it must equal ``pos.sum()``.

    Returns:
        ``(pos_idx, guard)``: (P,) int64 indices and, when ``num_positives`` was given, a 0-dim
        tensor that is 0, or NaN if a logit is NaN/±Inf, to be added to the loss values (without
        a host read a non-finite logit cannot raise; it makes the loss NaN instead). ``guard`` is
        None otherwise.

    Raises:
        FloatingPointError: NaN or ±Inf among the logits (``num_positives`` not given): one read
            of ``Σ_j (1[j positive] + 0·s_j)`` in float64, the number of positives or NaN.
    """
    if num_positives is None:
        check = torch.add(pos, s, alpha=0).sum(dtype=torch.float64).item()
        if not math.isfinite(check):
            raise FloatingPointError(f"{name}: the logits contain NaN or Inf")
        num, guard = int(check), None
    else:
        num, guard = int(num_positives), s.mul(0).sum()
    # nonzero_static with a host size: no synchronisation (plain nonzero reads its size back)
    return torch.nonzero_static(pos, size=num).squeeze(1), guard


def breakpoints(centres: torch.Tensor, delta: float
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The breakpoints ``c_i ∓ δ`` of the centres, sorted, and where each one falls.

    Args:
        centres: (P,) logits of the positives, P ≥ 1.
        delta: δ ≥ 0 (δ = 0: one breakpoint ``c_i`` per centre, hard step).

    Returns:
        ``(both, bp, r)``: ``both`` (2P,) = ``[c − δ; c + δ]`` (δ = 0: ``c``, (P,)), ``bp`` the
        same sorted, ``r`` = ``#{bp < both_i}`` (int64).
    """
    if delta > 0:
        both = (centres[None, :] + constant(((-delta,), (delta,)), centres.dtype,
                                            centres.device)).view(-1)
    else:
        both = centres
    bp = both.sort().values
    return both, bp, torch.searchsorted(bp, both)


def point_bins(bp: torch.Tensor, s: torch.Tensor, mask: torch.Tensor,
               grid: Optional[bool] = None, sanitize: bool = False) -> torch.Tensor:
    """Bin of every point, ``#{bp ≤ s_j}``, and 0 where ``mask`` is False: (M,) int64.

    Bin 0 lies below every breakpoint: its points take part in no sum (its tables are zero).

    Args:
        bp: (B,) sorted breakpoints.  s: (M,) points.  mask: (M,) bool, the points to bin.
        grid: use the uniform grid (default: on the CPU from ``GRID_MIN_POINTS`` points on).
        sanitize: map NaN points to bin 0 (needed by the grid when the logits were not checked).

    The grid maps every element to a cell ``int(clamp((x − off)/w, 0, C + 3))`` with about 64
    cells per breakpoint; the map is monotone non-decreasing (correctly rounded subtraction,
    division and clamp, truncation of non-negative numbers) and is applied in the same operations
    to the breakpoints and the points, so a cell that holds no breakpoint lies inside one bin, the
    number of breakpoints in the cells below it. The points of the cells that hold a breakpoint
    are binary-searched. The result equals the plain ``searchsorted``.
    """
    m = s.numel()
    if grid is None:
        grid = s.device.type == "cpu" and m >= GRID_MIN_POINTS
    if not grid:
        return torch.searchsorted(bp, s, right=True).mul_(mask)
    num_cells = int(max(min(64 * bp.numel(), m // 4, 1 << 18), 1024))
    ends = bp[:: max(bp.numel() - 1, 1)].tolist()  # CPU memory: no synchronisation
    lo, hi = ends[0], ends[-1]
    width = min(max(hi - lo, 1e-3), torch.finfo(bp.dtype).max / 8) / num_cells
    offset = lo - 2 * width  # the breakpoints land in cells ≥ 1
    v = torch.cat([s, bp]).sub_(offset).div_(width)
    if sanitize:
        v.nan_to_num_(nan=0.0)
    cell = v.clamp_(0, num_cells + 3).to(torch.int64)
    per_cell = torch.bincount(cell[m:], minlength=num_cells + 4)
    below = per_cell.cumsum(0) - per_cell  # breakpoints in the cells below: a pure cell's bin
    k = below.index_select(0, cell[:m])
    # CPU only (no device synchronisation): the points of cells that hold a breakpoint
    mixed = torch.nonzero((per_cell > 0).index_select(0, cell[:m])).squeeze(1)
    k.index_copy_(0, mixed, torch.searchsorted(bp, s.index_select(0, mixed), right=True))
    return k.mul_(mask)


def zero_buffers(device: torch.device, *shapes) -> Tuple[torch.Tensor, ...]:
    """Float64 zero tensors of the given shapes, views of one allocation (one fill)."""
    flat = torch.zeros(sum(math.prod(shape) for shape in shapes), dtype=torch.float64,
                       device=device)
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start: start + size].view(shape))
        start += size
    return tuple(out)


def histogram(num_bins: int, k: torch.Tensor, src: torch.Tensor,
              k_extra: Optional[torch.Tensor] = None,
              src_extra: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-bin sums of weighted points, float64 (R, num_bins).

    Args:
        k: (M,) bins (:func:`point_bins`).
        src: (R₁, M) rows in pairs ``(u_j, u_j·x_j)`` (float64 after promotion).
        k_extra, src_extra: optional second set of points (e.g. the positives), (n,), (R₂, n).
        out: optional zero float64 (R₁ + R₂, num_bins) to fill (:func:`zero_buffers`).

    The ``u·x`` rows of the first and the last bin are zeroed: those bins are never inside a
    window ``[c − δ, c + δ)``, and outliers (|x| ~ 1e30) there would spoil the prefix sums.
    """
    rows = src.shape[0] + (0 if src_extra is None else src_extra.shape[0])
    hist = out if out is not None else torch.zeros(rows, num_bins, dtype=torch.float64,
                                                   device=src.device)
    hist[: src.shape[0]].index_add_(1, k, src)
    if src_extra is not None:
        hist[src.shape[0]:].index_add_(1, k_extra, src_extra)
    hist[1::2, :: num_bins - 1].zero_()
    return hist


def sums_at_centres(hist: torch.Tensor, both: torch.Tensor, r: torch.Tensor,
                    delta: float) -> torch.Tensor:
    """(A): ``Σ_j u_j H(x_j − c_i)`` for every centre and weighting, float64 (R/2, P).

    Args:
        hist: (R, num_bins) from :func:`histogram`.  both, r: from :func:`breakpoints`.

    With prefix sums C(b) over the points x < b: ``#{x ≥ c + δ}`` counts fully, the points of
    ``[c − δ, c + δ)`` linearly, ``(Σ x − (c − δ)·n) / (2δ)``.
    """
    cs = hist.cumsum(1)
    at = cs.index_select(1, r)  # (R, 2P) or (R, P): sums over the points below each breakpoint
    if delta <= 0:
        return cs[0::2, -1:] - at[0::2]  # points with x ≥ c
    p = r.numel() // 2
    window = at[:, p:] - at[:, :p]  # points with c − δ ≤ x < c + δ
    lin = torch.addcmul(window[1::2], both[:p], window[0::2], value=-1)
    full = cs[0::2, -1:] - at[0::2, p:]
    return torch.add(full, lin, alpha=1.0 / (2.0 * delta))


def table_shape(num_bins: int, delta: float) -> Tuple[int, ...]:
    """Shape of the table of :func:`centre_tables`."""
    return (num_bins, 2) if delta > 0 else (num_bins,)


def centre_tables(w: torch.Tensor, both: torch.Tensor, r: torch.Tensor, num_bins: int,
                  delta: float, scale: float = 1.0,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B): per-bin table of ``scale · Σ_i w_i H(x − c_i)``, float64 (num_bins, 2), or
    (num_bins,) for δ = 0; evaluated by :func:`evaluate`.

    Args:
        w: (P,) weight of every centre.  both, r: from :func:`breakpoints`.
        out: optional zero float64 tensor of shape :func:`table_shape` to use.

    ``w H(x − c) = w/(2δ) (relu(x − c + δ) − relu(x − c − δ))``: on bin k the sum is
    ``A[k] − B[k]·x`` with ``(A, B)`` the prefix sums of ``(−ω b, −ω)`` over the breakpoints b
    below, ω = ±w/(2δ). The first bin is exactly zero; in the last one (above every window) the
    residue of B is removed, so that far outliers get exactly ``scale · Σ w``.
    """
    diff = out if out is not None else torch.zeros(table_shape(num_bins, delta),
                                                   dtype=torch.float64, device=w.device)
    if delta > 0:
        # ±scale/(2δ) folded into the weights (an ``alpha`` of index_add_ may be applied with a
        # fused multiply-add, which keeps the rounding residue of ``+a − a`` for huge logits).
        sign = scale / (2.0 * delta)
        omega = (w[None, :] * constant(((-sign,), (sign,)), torch.float64, w.device)).view(-1)
        diff[1:].index_add_(0, r, torch.stack([omega * both, omega], 1))
        table = diff.cumsum(0)
        table[-1:, 1:].zero_()
        return table
    diff[1:].index_add_(0, r, w.to(torch.float64), alpha=scale)
    return diff.cumsum(0)


def evaluate(table: torch.Tensor, k: torch.Tensor, x64: torch.Tensor) -> torch.Tensor:
    """(B) at every point: ``A[k] − B[k]·x``, float64 (M,); 0 for the points of bin 0.

    Args:
        table: from :func:`centre_tables`.  k: (M,) bins.  x64: (M,) the points in float64.
    """
    at = table.index_select(0, k)
    if table.dim() == 1:
        return at
    return torch.addcmul(at[:, 0], at[:, 1], x64, value=-1)


class NegativeStepSums:
    """The positive–negative step sums of one ranking-loss call (RS, aLRP and AP Loss).

    Sorts the breakpoints of the positives' logits (the centres), bins the negatives once and
    allocates the histogram and the gradient table in one zero-filled buffer.

    Args:
        s: (M,) flat logits, compute dtype.  neg: (M,) bool, the negatives.
        pos_idx: (P,) indices of the positives, P ≥ 1.  delta: δ of H.
        rows: rows of the histogram, 2 per weighting (:func:`histogram`).
        sanitize: map NaN logits to bin 0 (logits not checked, :func:`point_bins`).

    Attributes:
        fg_s: (P,) the positives' logits.  one: float64 scalar 1 (:func:`constant`).
        points: (2, M) float64 rows ``[1, s_j]``, the negatives' weights (bin 0 is masked out).
    """

    def __init__(self, s: torch.Tensor, neg: torch.Tensor, pos_idx: torch.Tensor, delta: float,
                 rows: int, sanitize: bool):
        self.delta = delta
        self.fg_s = s.index_select(0, pos_idx)
        self.both, self.bp, self.r = breakpoints(self.fg_s, delta)
        self.num_bins = self.bp.numel() + 1
        self.hist, self.diff = zero_buffers(s.device, (rows, self.num_bins),
                                            table_shape(self.num_bins, delta))
        self.k = point_bins(self.bp, s, neg, sanitize=sanitize)
        self.one = constant(1.0, torch.float64, s.device)
        self.points = torch.stack([self.one.expand(s.numel()), s])

    def at_centres(self, positives: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(A) for every centre, float64 (rows/2, P): first ``Σ_{j∈N} H(s_j − c_i)``, then one
        row per pair of ``positives`` (R₂, P) rows ``(u_j, u_j·x_j)`` over the positives."""
        k_pos = None
        if positives is not None:
            k_pos = torch.searchsorted(self.bp, self.fg_s, right=True)
        hist = histogram(self.num_bins, self.k, self.points, k_pos, positives, out=self.hist)
        return sums_at_centres(hist, self.both, self.r, self.delta)

    def at_points(self, w: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        """(B) for every logit, ``scale · Σ_i w_i H(s_j − c_i)`` (0 off the negatives): (M,) in
        ``dtype``.  w: (P,) weight of every centre."""
        table = centre_tables(w, self.both, self.r, self.num_bins, self.delta, scale=scale,
                              out=self.diff)
        return evaluate(table, self.k, self.points[1]).to(dtype)


def counts_per_bin(index: torch.Tensor, num_bins: int,
                   weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.bincount(index, weights, minlength=num_bins)`` for indices known to be in
    ``[0, num_bins)``, without its host sync on CUDA (``bincount`` reads the maximum index).

    Returns (num_bins,) int64 counts, or float64 sums of ``weights`` (accumulated in float64,
    as CPU ``bincount`` does).
    """
    if weights is None:
        out = torch.zeros(num_bins, dtype=torch.int64, device=index.device)
        return out.index_add_(0, index, torch.ones_like(index, dtype=torch.int64))
    out = torch.zeros(num_bins, dtype=torch.float64, device=index.device)
    return out.index_add_(0, index, weights.to(torch.float64))


def suffix_sums(x: torch.Tensor) -> torch.Tensor:
    """``out[:, k] = Σ_{m ≥ k} x[:, m]`` with a trailing zero column: (K, n) → (K, n + 1)."""
    out = x.new_zeros(x.shape[0], x.shape[1] + 1)
    out[:, :-1] = x.flip(1).cumsum(1).flip(1)
    return out


class StepBins:
    """The bins cut by the breakpoints ``c_i ± δ`` of a set of centres (the positives' logits).

    Bin k holds the x with exactly k breakpoints ≤ x. With ``r(v) = #{breakpoints ≤ v}`` for a
    breakpoint v, a point x lies in a bin ≥ r(v) ⇔ x ≥ v.

    Args:
        centers: (P,) logits of the positives, P ≥ 1, compute dtype.
        delta: δ ≥ 0 of the smoothed step (δ = 0: hard step 1[x ≥ 0], one breakpoint per centre).
    """

    def __init__(self, centers: torch.Tensor, delta: float):
        self.delta = float(delta)
        self.num_centers = centers.numel()
        self.centers64 = centers.to(torch.float64)
        if self.delta > 0:
            both = torch.cat([centers - self.delta, centers + self.delta])
            self.bp = both.sort().values
            self.r = torch.searchsorted(self.bp, both, right=True)  # [r(c_i − δ); r(c_i + δ)]
            self.r_lo, self.r_hi = self.r[: self.num_centers], self.r[self.num_centers:]
            self.inv2d = 1.0 / (2.0 * self.delta)
        else:
            self.bp = centers.sort().values
            self.r = self.r_lo = self.r_hi = torch.searchsorted(self.bp, centers, right=True)
            self.inv2d = 0.0
        self.num_bins = self.bp.numel() + 1

    def bin_of(self, x: torch.Tensor) -> torch.Tensor:
        """Exact bin index of every point (binary search)."""
        return torch.searchsorted(self.bp, x, right=True)

    def sums_at_centers(
        self,
        count: torch.Tensor,
        weight: torch.Tensor,
        weighted_x: torch.Tensor,
        shift: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(A): ``Σ_j u_j H(x_j − c_i)`` for every centre and K weightings u, float64 (K, P).

        Args:
            count: (num_bins,) number of points per bin (exact integers, any dtype).
            weight: (K, num_bins) float64 ``Σ u_j`` per bin.
            weighted_x: (K, num_bins) float64 ``Σ u_j (x_j − shift)`` per bin.
            shift: optional float64 scalar the point coordinates were shifted by (0 if None).
        """
        k = weight.shape[0]
        p = self.num_centers
        if self.delta <= 0:
            return suffix_sums(weight).index_select(1, self.r_hi)  # hard step: x ≥ c_i
        # The first and the last bin are never inside a window [c_i − δ, c_i + δ): leave their
        # coordinates out, so that outliers (|x| ~ 1e30) cannot spoil the sums.
        weighted_x = weighted_x.clone()
        weighted_x[:, 0] = 0
        weighted_x[:, -1] = 0
        stacked = torch.cat([weight, weighted_x, count.to(torch.float64)[None]], 0)
        at = suffix_sums(stacked).index_select(1, self.r)  # (2K + 1, 2P): at r_lo | at r_hi
        lo, hi = at[:, :p], at[:, p:]
        window = lo - hi  # sums over the points with c_i − δ ≤ x < c_i + δ
        centers = self.centers64 if shift is None else self.centers64 - shift
        lin = (window[k:2 * k] - centers * window[:k]) * self.inv2d + 0.5 * window[:k]
        n_lin = window[2 * k]  # exact (integers): exactly 0 for an empty window
        return hi[:k] + torch.where(n_lin > 0, lin, torch.zeros_like(lin))

    def tables(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B): per-bin ``(α, β)``, float64 (num_bins,), with ``Σ_i w_i H(x − c_i) = α[k] + β[k]x``.

        Args:
            w: (P,) weight of every centre.

        The first bin (below every breakpoint) is exactly (0, 0), the last one exactly (Σw, 0).
        """
        w64 = w.to(torch.float64)
        nb = self.num_bins
        if self.delta <= 0:
            alpha = torch.zeros(nb, dtype=torch.float64, device=w.device)
            alpha.index_add_(0, self.r_hi, w64)  # centres with c_i ≤ x contribute w_i
            alpha = alpha.cumsum(0)
            return alpha, torch.zeros_like(alpha)
        slope = w64 * self.inv2d
        const = 0.5 * w64 - slope * self.centers64  # w_i H(x − c_i) = const_i + slope_i x inside
        diff = torch.zeros(2, nb, dtype=torch.float64, device=w.device)
        diff.index_add_(1, self.r_lo, torch.stack([const, slope]))
        diff.index_add_(1, self.r_hi, torch.stack([w64 - const, -slope]))  # then w_i, constant
        ab = diff.cumsum(1)
        # Remove the rounding residue of the difference arrays above every window.
        ab[0, -1] = w64.sum()
        ab[1, -1:].zero_()  # a kernel; `ab[1, -1] = 0` copies a host scalar and syncs on CUDA
        return ab[0], ab[1]


def step_sums_over_points(bins: StepBins, x: torch.Tensor, u: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """(A) for a small set of points (e.g. the positives themselves): (K, P) float64.

    Args:
        x: (n,) points.  u: (K, n) weightings (None: one unit weighting, K = 1).
    """
    k = bins.bin_of(x)
    nb = bins.num_bins
    x64 = x.to(torch.float64)
    u64 = torch.ones_like(x64)[None] if u is None else u.to(torch.float64)
    count = counts_per_bin(k, nb)
    weight = torch.zeros(u64.shape[0], nb, dtype=torch.float64, device=x.device)
    weight.index_add_(1, k, u64)
    weighted_x = torch.zeros_like(weight).index_add_(1, k, u64 * x64)
    return bins.sums_at_centers(count, weight, weighted_x)


def ordered_step_sums(
    point_key: torch.Tensor,
    point_s: torch.Tensor,
    point_w: torch.Tensor,
    query_key: torch.Tensor,
    query_s: torch.Tensor,
    delta: float,
    point_minus_query: bool,
) -> torch.Tensor:
    """Step sums restricted to the points strictly before each query in a key order.

    For every query q returns, for each of K weightings,
    ``Σ_{p : key_p < key_q} w_p · H(s_p − s_q)``  (``point_minus_query=True``) or
    ``Σ_{p : key_p < key_q} w_p · H(s_q − s_p)``  (``point_minus_query=False``),
    a 2-D dominance sum (RS Loss needs it for "positives with a lower IoU", paper Eq. 9–10).

    Offline divide and conquer over the key order (CDQ), vectorised per level: the events
    (queries, then points at equal keys, so equal keys never count) are sorted by key and padded
    to a power of two; at the level with half size h every block of 2h events sends the points of
    its first half to the queries of its second half, through sorted logits + prefix sums + two
    batched ``searchsorted``. Every (point, query) pair with key_p < key_q meets in exactly one
    block. O((P + Q) log²(P + Q)) work in O(log(P + Q)) batched steps; computed in float64.

    Args:
        point_key, point_s: (P,) order key and logit of the points.
        point_w: (K, P) weights.
        query_key, query_s: (Q,) order key and logit of the queries.
        delta: δ of H (0: hard step 1[x ≥ 0]).
        point_minus_query: which difference H is applied to.

    Returns:
        (K, Q) float64.
    """
    dev = point_s.device
    f64 = torch.float64
    num_p, num_q = point_s.numel(), query_s.numel()
    k = point_w.shape[0]
    length = num_p + num_q
    size = 1 << max(1, (length - 1).bit_length())
    keys = torch.cat([query_key, point_key]).to(f64)
    is_point = torch.cat([torch.zeros(num_q, device=dev), torch.ones(num_p, device=dev)]).to(f64)
    order = torch.argsort(is_point, stable=True)
    order = order[torch.argsort(keys[order], stable=True)]  # by key, queries first at ties
    s_seq = torch.zeros(size, dtype=f64, device=dev)
    s_seq[:length] = torch.cat([query_s, point_s]).to(f64)[order]
    # weights, then the point indicator (exact integers: tells empty windows apart exactly)
    w_seq = torch.zeros(k + 1, size, dtype=f64, device=dev)
    w_seq[:k, :length] = torch.cat([torch.zeros(k, num_q, dtype=f64, device=dev),
                                    point_w.to(f64)], 1)[:, order]
    w_seq[k, :length] = is_point[order]
    result = torch.zeros(k, size, dtype=f64, device=dev)
    inv2d = 1.0 / (2.0 * delta) if delta > 0 else 0.0
    half = 1
    while half < size:
        blocks = size // (2 * half)
        s_blocks = s_seq.view(blocks, 2, half)
        left_s, perm = s_blocks[:, 0].sort(dim=1)
        q = s_blocks[:, 1].contiguous()
        left_w = w_seq.view(k + 1, blocks, 2, half)[:, :, 0].gather(
            2, perm.expand(k + 1, blocks, half))
        zero_col = torch.zeros(k + 1, blocks, 1, dtype=f64, device=dev)
        w_pre = torch.cat([zero_col, left_w.cumsum(2)], 2)  # (K + 1, blocks, half + 1)
        if delta > 0:
            ws_pre = torch.cat([zero_col[:k], (left_w[:k] * left_s).cumsum(2)], 2)
            if point_minus_query:  # H(s_p − q): full for s_p ≥ q + δ, linear on [q − δ, q + δ)
                i_lo = torch.searchsorted(left_s, q - delta)
                i_hi = torch.searchsorted(left_s, q + delta)
                at_hi = w_pre.gather(2, i_hi.expand(k + 1, blocks, half))
                full = w_pre[:k, :, -1:] - at_hi[:k]
            else:  # H(q − s_p): full for s_p ≤ q − δ, linear on (q − δ, q + δ)
                i_lo = torch.searchsorted(left_s, q - delta, right=True)
                i_hi = torch.searchsorted(left_s, q + delta)
                at_hi = w_pre.gather(2, i_hi.expand(k + 1, blocks, half))
                full = None
            at_lo = w_pre.gather(2, i_lo.expand(k + 1, blocks, half))
            window = at_hi - at_lo
            wx = (ws_pre.gather(2, i_hi.expand(k, blocks, half))
                  - ws_pre.gather(2, i_lo.expand(k, blocks, half)))
            if point_minus_query:
                lin = (wx - q * window[:k]) * inv2d + 0.5 * window[:k]
            else:
                full = at_lo[:k]
                lin = (q * window[:k] - wx) * inv2d + 0.5 * window[:k]
            part = full + torch.where(window[k:] > 0, lin, torch.zeros_like(lin))
        else:
            if point_minus_query:  # 1[s_p ≥ q]
                idx = torch.searchsorted(left_s, q)
                part = w_pre[:k, :, -1:] - w_pre[:k].gather(2, idx.expand(k, blocks, half))
            else:  # 1[q ≥ s_p]
                idx = torch.searchsorted(left_s, q, right=True)
                part = w_pre[:k].gather(2, idx.expand(k, blocks, half))
        result.view(k, blocks, 2, half)[:, :, 1] += part
        half *= 2
    position = torch.empty(length, dtype=torch.long, device=dev)
    position[order] = torch.arange(length, device=dev)
    return result[:, position[:num_q]]
