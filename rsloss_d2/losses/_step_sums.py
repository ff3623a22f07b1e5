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

The bin totals, suffix sums and tables are accumulated in float64 (they subtract totals over up
to 10^6 points) and only the final values are cast back to the compute dtype.

For the many negatives (10^5–10^6) a binary search per element would dominate the cost, so
:class:`PointBins` first maps every element to a cell of a *uniform* grid over the breakpoints'
range (~64 cells per breakpoint) with one multiply. The map is monotone, so a cell that holds no
breakpoint lies inside one bin, known from the cell; only the few elements in a cell that holds a
breakpoint are compared with that cell's breakpoints. Cost: O(N) elementwise work and histograms
over the negatives plus O(P log P) for the breakpoints; no P×N matrix and no loop over positives.
No approximation is made: the values equal the official ones up to float rounding.

RS Loss also needs sums over the positives *with a lower IoU* (its sorting part); for many
positives :func:`ordered_step_sums` does them with a divide and conquer over the IoU order, each
level one batched sort / prefix-sum / ``searchsorted`` step (O(P log² P), no P×P matrix).

Precision: all sums are float64 differences of prefix sums, so their absolute error is about
1e-16 × Σ|logits| — negligible for real logits; logits beyond ±1e5 in float32 are only as exact
as ``c ± δ`` is in float32 (the official loop has the same order of error in ``s_j − s_i``).

Host synchronisations per call (data-dependent shapes): the finite check, the number of
positives, the number of elements in breakpoint cells and the most breakpoints in one cell.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

__all__ = [
    "StepBins",
    "PointBins",
    "prepare_inputs",
    "positive_indices",
    "counts_per_bin",
    "no_autocast",
    "row_blocks",
    "step_sums_over_points",
    "ordered_step_sums",
]


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
    """Flatten, upcast and check the shapes of a ranking loss's inputs (no host sync).

    Args:
        name: loss name used in error messages.
        logits: any shape, floating point.
        targets: same number of elements as ``logits``.

    Returns:
        ``(s, t)``: ``s`` the flat logits in the compute dtype (still attached to the graph, the
        cast is differentiable), ``t`` the flat targets (detached, any dtype).

    Raises:
        ValueError: shape mismatch or non-floating logits.

    NaN / ±Inf logits are refused by :func:`positive_indices`, inside the loss, in the host read
    of the number of positives that the loss needs anyway.
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


def positive_indices(name: str, s: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Indices of the positives (P,) int64, ascending, and the finiteness check of the logits,
    in **one** host read (the number of positives is a data-dependent shape).

    Args:
        name: loss name used in error messages.
        s: (M,) flat logits (compute dtype).
        pos: (M,) bool, the positives.

    Raises:
        FloatingPointError: NaN or ±Inf among the logits (``aminmax``: min and max propagate NaN
            and expose ±Inf, one fused pass).
    """
    if s.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=s.device)
    lo, hi = torch.aminmax(s.detach())
    finite = torch.isfinite(torch.stack([lo, hi])).all()
    num_pos, ok = torch.stack([pos.sum(), finite.to(torch.long)]).tolist()
    if not ok:
        raise FloatingPointError(f"{name}: the logits contain NaN or Inf")
    # nonzero_static with a host size: no second sync (plain nonzero reads its size back)
    return torch.nonzero_static(pos, size=num_pos).squeeze(1)


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


def row_blocks(rows: int, cols: int, max_elements: int = 1 << 22):
    """Yield ``slice``s over ``rows`` so that each block has at most ~``max_elements`` entries.

    Used to bound the memory of the dense P×P positive–positive part (a loop over blocks of
    positives, never over single positives unless P is huge).
    """
    step = max(1, max_elements // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


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


class PointBins:
    """Exact bin indices of many points (the negatives), found through a uniform grid.

    Every element is mapped to a cell of a uniform grid over the breakpoints' range:
    ``v = clamp((x − off) · scale, 0, C − 1)``, ``cell = int(v)``, ``frac = v − cell`` ∈ [0, 1).
    This map is monotone non-decreasing (correctly rounded subtraction, multiplication and clamp,
    truncation of non-negative numbers) and is applied identically to the breakpoints and to the
    points, so a breakpoint b satisfies b < x if cell(b) < cell(x) and b > x if
    cell(b) > cell(x): in a cell that holds no breakpoint ("pure" cell) all points share one bin,
    ``#{b : cell(b) < cell}``, and the piecewise-linear sums are linear in ``frac``. Only points
    in the ≤ 2P cells that hold a breakpoint are compared with that cell's breakpoints (binary
    search if a cell holds more than 8); ~64 cells per breakpoint keep those points few unless
    they concentrate on the breakpoints. The result is
    exact up to float rounding; in float32 a point's position inside its cell is known to about
    ``eps · (grid width)``, the same order as the rounding of the logits themselves.

    Args:
        bins: the breakpoints.
        x: (M,) all flat logits (compute dtype).
        mask: (M,) bool, the points to use (the negatives); the others are put in cell 0, which
            lies below every breakpoint (bin 0: never inside a window, value 0 in
            :meth:`evaluate`).
        cells_per_breakpoint: grid resolution (cells ≈ this × number of breakpoints, at most
            M / 4 and 2^18, at least 1024).
    """

    def __init__(self, bins: StepBins, x: torch.Tensor, mask: torch.Tensor,
                 cells_per_breakpoint: int = 64):
        self.bins = bins
        bp = bins.bp
        dev = x.device
        # ~64 cells per breakpoint, but not many more cells than points (per-cell work), ≤ 2^18.
        num_cells = int(max(min(cells_per_breakpoint * bp.numel(), x.numel() // 4, 1 << 18), 1024))
        lo, hi = bp[0], bp[-1]
        # Width clamped to stay finite for absurd logits (±1e38): the map stays monotone.
        width = (hi - lo).clamp(1e-3, torch.finfo(bp.dtype).max / 8)
        scale = num_cells / width
        offset = lo - 2 * width / num_cells  # breakpoints land in cells ≥ 1 (≈ 2 .. C − 2)
        cells = num_cells + 4
        max_cell = float(cells - 1)
        # Breakpoints through the very same operations as the points.
        bp_cell = ((bp - offset) * scale).clamp_(0.0, max_cell).to(torch.int32)
        bp_per_cell = counts_per_bin(bp_cell, cells)
        below = bp_per_cell.cumsum(0) - bp_per_cell  # bin of every point of a pure cell
        mixed = bp_per_cell > 0
        v = (x - offset).mul_(scale)
        v = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=dev)).clamp_(0.0, max_cell)
        cell = v.to(torch.int32)
        frac = v.sub_(cell)  # position inside the cell, in [0, 1) (in place: v is not needed)
        count_c = counts_per_bin(cell, cells)
        frac_c = counts_per_bin(cell, cells, weights=frac)
        # Points in a cell that holds a breakpoint: exact bin by comparison with the few
        # breakpoints of that cell (they are bp[below[c] : below[c] + bp_per_cell[c]]).
        # Their number and the most breakpoints in one cell: one host read for both.
        in_mixed = mixed.to(torch.uint8).index_select(0, cell)
        num_mixed, max_per_cell = torch.stack([in_mixed.sum(), bp_per_cell.max()]).tolist()
        self.mixed_idx = torch.nonzero_static(in_mixed, size=num_mixed).squeeze(1)
        self.mixed_x = x.index_select(0, self.mixed_idx)
        self.mixed_bin = self._resolve(bp, below, bp_per_cell, cell, self.mixed_x, max_per_cell)
        # Per-bin number of points and Σ (x − off): pure cells by cell, the others exactly.
        nb = bins.num_bins
        scale64 = scale.to(torch.float64)
        self._offset64 = offset.to(torch.float64)
        cell_index = torch.arange(cells, dtype=torch.float64, device=dev)
        sum_c = (count_c.to(torch.float64) * cell_index + frac_c) / scale64
        self.count = torch.zeros(nb, dtype=count_c.dtype, device=dev)
        self.count.index_add_(0, below, count_c.masked_fill(mixed, 0))
        self.count += counts_per_bin(self.mixed_bin, nb)
        self.sum_u = torch.zeros(nb, dtype=torch.float64, device=dev)
        self.sum_u.index_add_(0, below, sum_c.masked_fill(mixed, 0))
        self.sum_u += counts_per_bin(
            self.mixed_bin, nb, weights=self.mixed_x.to(torch.float64) - self._offset64)
        self._cell_ids = cell
        self._frac = frac
        self._below = below
        self._cell_left = self._offset64 + cell_index / scale64  # x of each cell's left edge
        self._cell_width = 1.0 / scale64

    def _resolve(self, bp, below, bp_per_cell, cell, mixed_x, max_per_cell: int,
                 max_compare: int = 8):
        if max_per_cell > max_compare or mixed_x.numel() == 0:
            return self.bins.bin_of(mixed_x)
        mixed_cell = cell.index_select(0, self.mixed_idx)
        first = below.index_select(0, mixed_cell)
        count = bp_per_cell.index_select(0, mixed_cell)
        k = first.clone()
        last = bp.numel() - 1
        for m in range(max_per_cell):
            b = bp.index_select(0, (first + m).clamp_max_(last))
            k += (mixed_x >= b) & (count > m)
        return k

    def sums_at_centers(self) -> torch.Tensor:
        """(A) with unit weights: ``Σ_j H(x_j − c_i)`` over the masked points, float64 (P,)."""
        return self.bins.sums_at_centers(
            self.count, self.count.to(torch.float64)[None], self.sum_u[None], shift=self._offset64
        )[0]

    def evaluate(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """(B): ``α[k] + β[k]·x`` for every masked element, 0 elsewhere; (M,) compute dtype.

        On a pure cell the value is linear in ``frac``: ``value(left edge) + β·width·frac``,
        both per cell in float64 then cast and packed in one complex table, so one gather and
        one multiply-add per element, without cancellation. Points of the other cells use their
        exact bin.
        """
        dtype = self._frac.dtype
        a = alpha.index_select(0, self._below)
        b = beta.index_select(0, self._below)
        table = torch.complex((a + b * self._cell_left).to(dtype), (b * self._cell_width).to(dtype))
        per_point = torch.view_as_real(table.index_select(0, self._cell_ids))
        out = torch.addcmul(per_point[:, 0], per_point[:, 1], self._frac)
        exact = alpha.index_select(0, self.mixed_bin) + beta.index_select(0, self.mixed_bin) * (
            self.mixed_x.to(torch.float64))
        out.index_put_((self.mixed_idx,), exact.to(dtype))
        return out


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
    a 2-D dominance sum (RS Loss needs it for "positives with a lower IoU", spec §2.1–2.2).

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
