"""The breakpoint/prefix-sum machinery behind the losses, against brute-force P×N sums."""
import pytest
import torch

from rsloss_d2.losses._step_sums import (
    StepBins,
    breakpoints,
    centre_tables,
    evaluate,
    histogram,
    ordered_step_sums,
    point_bins,
    step_sums_over_points,
    sums_at_centres,
)


def _h(x, delta):
    if delta > 0:
        return torch.clamp(x / (2 * delta) + 0.5, 0, 1)
    return (x >= 0).double()


def _check(centers, points, mask, delta, w, tol=1e-9, grid=None):
    """(A) and (B) over the masked points against the brute-force P×N matrix."""
    both, bp, r = breakpoints(centers, delta)
    k = point_bins(bp, points, mask, grid=grid)
    assert torch.equal(k, torch.searchsorted(bp, points, right=True) * mask)  # exact bins
    nb = bp.numel() + 1
    src = torch.stack([torch.ones_like(points, dtype=torch.float64), points])
    got_a = sums_at_centres(histogram(nb, k, src), both, r, delta)[0]
    h = _h(points[mask][None, :].double() - centers[:, None].double(), delta)  # (P, N)
    assert (got_a - h.sum(1)).abs().max() < tol
    got_b = evaluate(centre_tables(w, both, r, nb, delta), k, src[1])
    expected = torch.zeros_like(points, dtype=torch.float64)
    expected[mask] = (w.double()[:, None] * h).sum(0)
    assert (got_b - expected).abs().max() < tol
    assert (got_b[~mask] == 0).all()
    return k


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("delta", [0.5, 1.0, 0.0, 0.01])
@pytest.mark.parametrize("seed", range(4))
def test_random_points(delta, seed, grid):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(30 + 20 * seed, generator=g, dtype=torch.float64)
    points = torch.randn(5000, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(5000, generator=g) < 0.9
    w = torch.rand(centers.numel(), generator=g, dtype=torch.float64)
    _check(centers, points, mask, delta, w, grid=grid)


@pytest.mark.parametrize("grid", [False, True])
def test_points_on_breakpoints_and_ties(grid):
    centers = torch.tensor([0.0, 0.0, 0.25, 1.0, 1.0, 1.0], dtype=torch.float64)
    for delta in [0.5, 0.25, 0.0]:
        pts = torch.cat([centers, centers - delta, centers + delta, torch.arange(-8, 9) * 0.125])
        mask = torch.ones_like(pts, dtype=torch.bool)
        w = torch.arange(1, 7, dtype=torch.float64)
        _check(centers, pts, mask, delta, w, tol=1e-12, grid=grid)


@pytest.mark.parametrize("grid", [False, True])
def test_all_points_in_one_cell_and_outliers(grid):
    centers = torch.tensor([0.3], dtype=torch.float64)
    pts = torch.tensor([0.3] * 50 + [0.3 + 1e-9, 0.3 - 1e-9, 1e30, -1e30, 1e300, -5.0],
                       dtype=torch.float64)
    mask = torch.ones_like(pts, dtype=torch.bool)
    for delta in [0.5, 0.0]:
        _check(centers, pts, mask, delta, torch.tensor([2.0], dtype=torch.float64), tol=1e-12,
               grid=grid)


@pytest.mark.parametrize("grid", [False, True])
def test_float32_points(grid):
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(200, generator=g)
    points = torch.randn(100000, generator=g) * 3
    mask = torch.rand(100000, generator=g) < 0.95
    w = torch.rand(200, generator=g) / 200
    both, bp, r = breakpoints(centers, 0.5)
    k = point_bins(bp, points, mask, grid=grid)
    assert torch.equal(k, torch.searchsorted(bp, points, right=True) * mask)
    got = evaluate(centre_tables(w, both, r, bp.numel() + 1, 0.5), k, points.double())
    idx = mask.nonzero().squeeze(1)[:3000]
    h = _h(points[idx][None, :].double() - centers[:, None].double(), 0.5)
    assert (got[idx] - (w.double()[:, None] * h).sum(0)).abs().max() < 1e-6


def test_sums_over_points_weighted():
    centers = torch.tensor([0.0, 0.4, 2.0], dtype=torch.float64)
    u = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    bins = StepBins(centers, 0.5)
    got = step_sums_over_points(bins, centers, u[None])[0]
    h = _h(centers[None, :] - centers[:, None], 0.5)
    assert torch.allclose(got, (h * u[None, :]).sum(1), atol=1e-14, rtol=0)


@pytest.mark.parametrize("grid", [False, True])
def test_many_breakpoints_in_one_cell(grid):
    """Many (tied or nearly tied) breakpoints in one grid cell: the exact bins still."""
    centers = torch.cat([torch.full((12,), 0.5), torch.tensor([0.5 + 1e-9, 3.0])]).double()
    pts = torch.cat([centers, centers + 0.25, centers - 0.25, torch.linspace(-1, 4, 101)]).double()
    mask = torch.ones_like(pts, dtype=torch.bool)
    w = torch.rand(centers.numel(), generator=torch.Generator().manual_seed(0)).double()
    for delta in [0.25, 0.0]:
        _check(centers, pts, mask, delta, w, tol=1e-12, grid=grid)


@pytest.mark.parametrize("delta", [0.5, 0.25, 0.0])
@pytest.mark.parametrize("point_minus_query", [True, False])
def test_ordered_step_sums_brute_force(delta, point_minus_query):
    g = torch.Generator().manual_seed(int(delta * 8) + 2 * point_minus_query)
    for _ in range(6):
        num_p, num_q = [int(v) for v in torch.randint(1, 70, (2,), generator=g)]
        pk = torch.randint(0, 6, (num_p,), generator=g).double()  # many equal keys
        qk = torch.randint(0, 6, (num_q,), generator=g).double()
        ps = torch.round(torch.randn(num_p, generator=g, dtype=torch.float64) * 4) / 4
        qs = torch.round(torch.randn(num_q, generator=g, dtype=torch.float64) * 4) / 4
        w = torch.rand(2, num_p, generator=g, dtype=torch.float64)
        got = ordered_step_sums(pk, ps, w, qk, qs, delta, point_minus_query)
        d = ps[None, :] - qs[:, None] if point_minus_query else qs[:, None] - ps[None, :]
        h = _h(d, delta) * (pk[None, :] < qk[:, None])  # strictly smaller key only
        assert (got - (w[:, None, :] * h[None]).sum(-1)).abs().max() < 1e-12
