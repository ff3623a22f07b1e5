"""PAA re-assignment (PAA paper §3.1): the batched EM equals a per-object EM written from sklearn's
algorithm, and the selection equals a per-GT reference, on random cost sets incl. GTs with 0, 1,
2 candidates, equal costs and ties."""
import numpy as np
import torch

from _matcher_refs import gmm_em_reference, paa_reference, random_paa_case
from rsloss_d2.modeling.matchers import gmm2_em_1d, paa_reassign


def _rows(gen, num_rows, max_k=45):
    """Padded (G, K) samples: random sizes 2..max_k, two-mode costs; some rows with ties."""
    sizes = torch.randint(2, max_k + 1, (num_rows,), generator=gen)
    sizes[:3] = torch.tensor([2, 3, 2])
    x = torch.zeros((num_rows, max_k), dtype=torch.float64)
    valid = torch.arange(max_k)[None, :] < sizes[:, None]
    for r in range(num_rows):
        n = int(sizes[r])
        low = 0.2 + 0.4 * torch.rand(n, generator=gen)
        v = torch.where(torch.rand(n, generator=gen) < 0.4, low,
                        0.9 + 2.0 * torch.rand(n, generator=gen)).double()
        if r % 7 == 3:
            v = (v * 4).round() / 4  # many exact ties
        if r == 2:
            v[:] = 1.25  # all equal
        x[r, :n] = v.sort().values
    return x, valid, sizes


def test_batched_em_equals_per_object_em():
    gen = torch.Generator().manual_seed(0)
    x, valid, sizes = _rows(gen, 60)
    labels, dens, n_iter = gmm2_em_1d(x, valid)
    for r in range(len(x)):
        n = int(sizes[r])
        ref_labels, ref_dens, ref_iter = gmm_em_reference(x[r, :n].numpy())
        assert labels[r, :n].tolist() == ref_labels.tolist(), r
        np.testing.assert_allclose(dens[r, :n].numpy(), ref_dens, rtol=1e-9, atol=1e-9)
        assert int(n_iter[r]) == ref_iter, r
        assert torch.isinf(dens[r, n:]).all()
    # The rows stop at different iterations (each on its own), and some fits need many.
    assert len(set(n_iter.tolist())) > 3 and int(n_iter.max()) > 5


def test_em_row_independence_and_short_rows():
    gen = torch.Generator().manual_seed(1)
    x, valid, _ = _rows(gen, 12)
    labels, dens, n_iter = gmm2_em_1d(x, valid)
    # Fitting one row alone gives the same as inside the batch.
    for r in (0, 5, 11):
        l1, d1, i1 = gmm2_em_1d(x[r:r + 1], valid[r:r + 1])
        assert torch.equal(l1[0], labels[r]) and torch.equal(i1[0], n_iter[r])
        torch.testing.assert_close(d1[0], dens[r], rtol=1e-12, atol=1e-12)
    # Rows with < 2 samples are not fitted: no iterations, -inf densities, no NaN anywhere.
    valid2 = valid.clone()
    valid2[4] = False
    valid2[5, 1:] = False
    _, d2, i2 = gmm2_em_1d(x, valid2)
    assert i2[4] == 0 and i2[5] == 0 and torch.isinf(d2[4:6]).all()
    assert not torch.isnan(d2).any()


def test_two_candidates_collapse_to_one_each():
    # Two samples: each component takes one; the lower-cost one is label 0 and is kept.
    keep = paa_reassign(torch.tensor([0.9, 0.2]), torch.tensor([0, 0]), torch.tensor([0, 1]), 1)
    assert keep.tolist() == [False, True]


def test_paa_reassign_hand_made_rules():
    # GT 0: one candidate -> no positive (GMM needs 2). GT 1: none. GT 2: 12 candidates on one
    # level: only the 9 cheapest enter the fit, so the 3 most expensive are dropped in any case.
    costs = torch.tensor([0.5, 0.10, 0.11, 0.12, 0.13, 2.0, 2.1, 2.2, 2.3, 2.4, 0.05, 0.06, 0.07])
    gts = torch.tensor([0] + [2] * 12)
    lvls = torch.tensor([0] + [1] * 12)
    keep = paa_reassign(costs, gts, lvls, num_gts=3)
    ref = paa_reference(costs, gts, lvls, 3)
    assert torch.equal(keep, ref)
    assert not keep[0]
    # The 9 cheapest: 0.05, 0.06, 0.07, 0.10 .. 0.13, 2.0, 2.1. The low mode (7 costs near 0.1)
    # is component 0; the kept ones are a prefix of it in cost order.
    kept_costs = sorted(costs[keep].tolist())
    assert kept_costs == sorted(costs[1:][costs[1:] < 1].tolist())[: len(kept_costs)]
    assert len(kept_costs) >= 1 and not keep[costs >= 2.2].any()
    # topk=2 per level: candidates 0.05, 0.06 only.
    keep2 = paa_reassign(costs, gts, lvls, num_gts=3, topk=2)
    assert torch.equal(keep2, paa_reference(costs, gts, lvls, 3, topk=2))
    assert set(costs[keep2].tolist()) <= {costs[10].item(), costs[11].item()}


def test_paa_reassign_random_equals_reference():
    gen = torch.Generator().manual_seed(2)
    kept_total = 0
    for num_gts, rounding in ((6, None), (20, None), (15, 0.05), (30, 0.25)):
        costs, gts, lvls = random_paa_case(gen, num_gts, rounding=rounding)
        keep = paa_reassign(costs, gts, lvls, num_gts)
        assert keep.dtype == torch.bool and keep.shape == costs.shape
        assert torch.equal(keep, paa_reference(costs, gts, lvls, num_gts)), (num_gts, rounding)
        assert not keep[gts == 0].any()  # one candidate only
        kept_total += int(keep.sum())
        # Invariant under a permutation of the input (no exact ties without rounding).
        if rounding is None:
            perm = torch.randperm(len(costs), generator=gen)
            assert torch.equal(paa_reassign(costs[perm], gts[perm], lvls[perm], num_gts),
                               keep[perm])
    assert kept_total > 50


def test_paa_reassign_empty_inputs():
    e = torch.zeros(0)
    el = torch.zeros(0, dtype=torch.long)
    assert paa_reassign(e, el, el, 0).shape == (0,)
    assert paa_reassign(e, el, el, 4).shape == (0,)
    one = paa_reassign(torch.tensor([0.3]), torch.tensor([1]), torch.tensor([0]), 2)
    assert one.tolist() == [False]
