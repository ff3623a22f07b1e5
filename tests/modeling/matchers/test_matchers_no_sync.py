"""The host-sync-free forms of the dense assigners give exactly what the earlier forms gave:
the frozen-row EM (host check every K iterations) vs the EM that shrank its rows every iteration,
the all-rows ATSS tie rule vs the fix-up of the ambiguous rows only, the host-side valid grid vs
the device mask. (That they do not synchronise with the host is measured on a GPU by
tools/diagnostics/count_host_syncs.py; the counts are in the README.)"""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from _matcher_refs import grid_anchors, random_paa_case
from rsloss_d2.modeling.matchers import (
    atss_assign,
    gmm2_em_1d,
    paa_reassign,
    valid_anchor_mask,
    valid_grid_sizes,
)
from rsloss_d2.modeling.matchers.atss import _level_candidates
from rsloss_d2.modeling.matchers.paa import _logsumexp2, _weighted_log_prob
from rsloss_d2.modeling.ranking_retinanet.meta_arch import _gt_tables


# ------------------------------------------------ the earlier forms (verbatim), as references
def gmm_shrink_reference(x, valid, reg_covar=1e-5, max_iter=100, tol=1e-3):
    """The EM that dropped the converged rows after every iteration (one host read each)."""
    x = torch.where(valid, x.to(torch.float64), 0.0)
    valid_f = valid.to(torch.float64)
    n = valid_f.sum(1)
    fit = n >= 2
    g = x.shape[0]
    means = torch.stack([torch.where(valid, x, math.inf).amin(1),
                         torch.where(valid, x, -math.inf).amax(1)], 1)
    means = torch.where(fit[:, None], means, 0.0)
    weights = torch.full((g, 2), 0.5, dtype=torch.float64)
    prec_chol = torch.ones((g, 2), dtype=torch.float64)
    lower_bound = torch.full((g,), -math.inf, dtype=torch.float64)
    n_iter = torch.zeros((g,), dtype=torch.long)
    eps10 = 10 * torch.finfo(torch.float64).eps
    rows = fit.nonzero().squeeze(1)
    for _ in range(max_iter):
        if rows.numel() == 0:
            break
        xa, va = x[rows], valid_f[rows]
        weighted = _weighted_log_prob(xa, means[rows], prec_chol[rows], weights[rows])
        log_norm = _logsumexp2(weighted)
        new_bound = (log_norm * va).sum(1) / n[rows]
        resp = torch.exp(weighted - log_norm[..., None]) * va[..., None]
        nk = resp.sum(1) + eps10
        new_means = (resp * xa[..., None]).sum(1) / nk
        covar = (resp * (xa * xa)[..., None]).sum(1) / nk - new_means ** 2 + reg_covar
        means[rows] = new_means
        prec_chol[rows] = 1.0 / covar.clamp(min=1e-300).sqrt()
        weights[rows] = nk / nk.sum(1, keepdim=True)
        converged = (new_bound - lower_bound[rows]).abs() < tol
        lower_bound[rows] = new_bound
        n_iter[rows] += 1
        rows = rows[~converged]
    weighted = _weighted_log_prob(x, means, prec_chol, weights)
    labels = (weighted[..., 1] > weighted[..., 0]).long()
    log_density = torch.where(valid & fit[:, None], _logsumexp2(weighted), -math.inf)
    return labels, log_density, n_iter


def level_candidates_reference(anchor_ctr, gt_ctr, k):
    """The tie fix-up applied to the ambiguous rows only (found by nonzero)."""
    ax, ay = anchor_ctr[:, 0].contiguous(), anchor_ctr[:, 1].contiguous()
    dist = ax - gt_ctr[..., 0:1]
    dy = ay - gt_ctr[..., 1:2]
    dist.mul_(dist).add_(dy.mul_(dy)).sqrt_()
    a_l = dist.shape[-1]
    vals, idx = dist.topk(min(k + 1, a_l), dim=-1, largest=False, sorted=True)
    idx = idx[..., :k]
    kth = vals[..., k - 1:k]
    if a_l == k:
        return idx.sort(dim=-1).values
    amb = (vals[..., k] == vals[..., k - 1]).nonzero(as_tuple=True)
    if amb[0].numel():
        rows, kth_r = dist[amb], kth[amb]
        below = rows < kth_r
        tie = rows == kth_r
        room = k - below.sum(-1, keepdim=True)
        chosen = below | (tie & (tie.cumsum(-1, dtype=torch.int32) <= room))
        idx[amb] = chosen.to(rows.dtype).topk(k, dim=-1).indices
    return idx.sort(dim=-1).values


def _em_rows(gen, num_rows=50, max_k=45):
    sizes = torch.randint(0, max_k + 1, (num_rows,), generator=gen)
    sizes[:4] = torch.tensor([0, 1, 2, 3])  # not fitted (0, 1 samples), smallest fits
    x = torch.zeros((num_rows, max_k), dtype=torch.float64)
    for r, n in enumerate(sizes.tolist()):
        low = 0.2 + 0.4 * torch.rand(n, generator=gen)
        v = torch.where(torch.rand(n, generator=gen) < 0.4, low,
                        0.9 + 2.0 * torch.rand(n, generator=gen)).double()
        if r % 6 == 5:
            v = (v * 4).round() / 4
        x[r, :n] = v[torch.randperm(n, generator=gen)]
    return x, torch.arange(max_k)[None, :] < sizes[:, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_frozen_em_equals_per_iteration_shrink(seed):
    x, valid = _em_rows(torch.Generator().manual_seed(seed))
    for max_iter, reg in ((100, 1e-5), (100, 1e-6), (7, 1e-5), (1, 1e-5)):
        ref = gmm_shrink_reference(x, valid, reg_covar=reg, max_iter=max_iter)
        if max_iter == 100:  # rows converge at many different iterations
            assert len(set(ref[2].tolist())) > 4 and int(ref[2].max()) > 10
        for k in (1, 2, 5, 10, 1000):
            got = gmm2_em_1d(x, valid, reg_covar=reg, max_iter=max_iter, check_every=k)
            for a, b in zip(got, ref):
                assert torch.equal(a, b), (max_iter, reg, k)
    with pytest.raises(ValueError):
        gmm2_em_1d(x, valid, check_every=0)
    # No row fitted at all: nothing iterates.
    _, dens, n_iter = gmm2_em_1d(x[:2], valid[:2])
    assert (n_iter == 0).all() and torch.isinf(dens).all()


def test_paa_reassign_counts_without_bincount():
    gen = torch.Generator().manual_seed(5)
    costs, gts, lvls = random_paa_case(gen, 12)
    keep = paa_reassign(costs, gts, lvls, 14)  # two trailing GTs without any initial positive
    assert torch.equal(keep, paa_reassign(costs, gts, lvls, 12))


def _centres(gen, n, g, tie_prone):
    c = torch.rand((n, g, 2), generator=gen) * 128
    if tie_prone:  # on the grid or half-way between cells: many equal distances
        c = (c / 4).round() * 4
    return c


@pytest.mark.parametrize("tie_prone", [False, True])
def test_level_candidates_equal_the_ambiguous_row_fix_up(tie_prone):
    gen = torch.Generator().manual_seed(int(tie_prone))
    levels = [grid_anchors(16, 8, [32.0, 40.3, 50.8]), grid_anchors(8, 16, [64.0]),
              grid_anchors(2, 64, [256.0, 322.5, 406.4]), grid_anchors(1, 128, [512.0])]
    for anchors in levels:
        ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_ctr = _centres(gen, 3, 7, tie_prone)
        for k in sorted({1, 2, 3, 5, 9, min(9, len(anchors))}):
            k = min(k, len(anchors))
            got = _level_candidates(ctr, gt_ctr, k)
            assert torch.equal(got, level_candidates_reference(ctr, gt_ctr.clone(), k)), k
            # and the rule itself: the k smallest (distance, index) pairs (same arithmetic)
            dx, dy = ctr[:, 0] - gt_ctr[..., 0:1], ctr[:, 1] - gt_ctr[..., 1:2]
            d = (dx * dx + dy * dy).sqrt()
            order = torch.argsort(d, dim=-1, stable=True)[..., :k]
            assert torch.equal(got, order.sort(-1).values)


def test_host_valid_grid_equals_device_mask_and_atss_assign_paths_agree():
    grid, strides, num_a = [(8, 8), (4, 4), (2, 2)], [8, 16, 32], 2
    per_level = []
    for (h, w), s in zip(grid, strides):
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        ctr = torch.stack([xs, ys], -1).reshape(-1, 1, 2).float()
        half = torch.tensor([s * 4.0, s * 5.0]).reshape(1, -1, 1) / 2
        per_level.append(torch.cat([ctr - half, ctr + half], -1).reshape(-1, 4))
    sizes = [(64, 64), (40, 30), (64, 20), (33, 64)]
    valid = valid_anchor_mask(per_level, strides, sizes, 32)
    vs = valid_grid_sizes(grid, strides, sizes, 32)
    for i, per_img in enumerate(vs):
        cells = [torch.zeros(h, w, num_a, dtype=torch.bool) for h, w in grid]
        for c, (vh, vw) in zip(cells, per_img):
            c[:vh, :vw] = True
        assert torch.equal(torch.cat([c.reshape(-1) for c in cells]), valid[i]), i
    gts = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 62.0]]),
           torch.tensor([[2.0, 3.0, 20.0, 26.0], [10.0, 12.0, 28.0, 38.0]]),
           torch.tensor([[1.0, 2.0, 18.0, 50.0]]), torch.zeros((0, 4))]
    device_path = atss_assign(per_level, gts, valid, topk=9)
    host_path = atss_assign(per_level, gts, valid, topk=9, grid_sizes=grid, valid_sizes=vs)
    assert torch.equal(host_path, device_path)
    assert (host_path >= 0).sum() > 3 and (host_path == -2).any()
    # whole images only (no IGNORED): one batched call
    whole = atss_assign(per_level, gts[:1], valid[:1], grid_sizes=grid, valid_sizes=vs[:1])
    assert torch.equal(whole, device_path[:1])


def test_gt_tables_by_slices():
    insts = []
    for n in (3, 0, 5):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.rand(n, 4) * 10 + torch.tensor([0.0, 0.0, 20.0, 20.0]))
        inst.gt_classes = torch.arange(n) % 4 + 1
        insts.append(inst)
    boxes, classes = _gt_tables(insts)
    assert classes.tolist() == [[1, 2, 3, 0, 0], [0] * 5, [1, 2, 3, 4, 1]]
    assert boxes.shape == (3, 5, 4)


# ------------------------------------------------ CUDA: no host synchronisation
