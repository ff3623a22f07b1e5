"""Cost of the ranking losses: operations dispatched and host reads per forward + backward.

Counted with torch.profiler on the CPU (top-level ATen operations, views and metadata not
counted, see :mod:`rsloss_d2.losses.op_count`); the binning a GPU runs (one searchsorted) is
pinned at ≤ 60 operations and one host read, none when the caller passes the number of
positives. The CPU grid binning (CPU inputs of ``GRID_MIN_POINTS`` logits or more, where a
binary search per point costs more than the grid's extra operations) is pinned separately.
Each bound fails if operations creep back in.
"""
import pytest
import torch

import rsloss_d2.losses._step_sums as step_sums
import rsloss_d2.losses.rank_sort as rank_sort_module
from rsloss_d2.losses import alrp_loss, ap_loss, rank_sort_loss
from rsloss_d2.losses.op_count import count_host_reads, count_ops
from rsloss_d2.losses.reference import (
    alrp_loss_reference,
    ap_loss_reference,
    rank_sort_loss_reference,
)
from rsloss_d2.losses.synthetic import random_ranking_inputs

from _ranking_cases import max_abs_diff, random_case

MAX_OPS = 60  # forward + backward, as a GPU launches them
MAX_OPS_CPU_GRID = 75  # the CPU-only uniform grid replaces one searchsorted by 15 operations


def _inputs(p, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits, binary, ious = random_ranking_inputs(p, n, g)
    binary[-5:] = -1  # a few ignored entries
    ious[-5:] = -1
    return logits, binary, ious, torch.rand(int((binary == 1).sum()), generator=g)


def _step(name, logits, binary, ious, loc, **kwargs):
    """The call the benchmark times: loss forward + backward of the output that carries it."""
    def run():
        x = logits.detach().requires_grad_(True)
        if name == "rs":
            a, b = rank_sort_loss(x, ious, **kwargs)
            (a + b).backward()
        elif name == "alrp":
            alrp_loss(x, binary, loc, **kwargs)[0].backward()
        else:
            ap_loss(x, binary, **kwargs).backward()
        return x.grad
    return run


@pytest.fixture
def search_binning(monkeypatch):
    monkeypatch.setattr(step_sums, "GRID_MIN_POINTS", 1 << 62)


@pytest.mark.parametrize("name", ["rs", "alrp", "ap"])
@pytest.mark.parametrize("size", [(100, 10_000), (1000, 40_000), (7, 300)])
def test_operations_and_host_reads(name, size, search_binning):
    logits, binary, ious, loc = _inputs(*size)
    run = _step(name, logits, binary, ious, loc)
    ops = count_ops(run)
    assert sum(ops.values()) <= MAX_OPS, ops
    assert dict(count_host_reads(run)) == {"aten::_local_scalar_dense": 1}  # P + finite check
    num_pos = int((ious > 0).sum()) if name == "rs" else loc.numel()
    run_known = _step(name, logits, binary, ious, loc, num_positives=num_pos)
    assert sum(count_ops(run_known).values()) <= MAX_OPS
    assert sum(count_host_reads(run_known).values()) == 0


@pytest.mark.parametrize("name", ["rs", "alrp", "ap"])
def test_cpu_grid_operations(name, monkeypatch):
    monkeypatch.setattr(step_sums, "GRID_MIN_POINTS", 0)
    logits, binary, ious, loc = _inputs(1000, 40_000)
    run = _step(name, logits, binary, ious, loc)
    assert sum(count_ops(run).values()) <= MAX_OPS_CPU_GRID
    # CPU tensors: the grid's reads are of host memory, no device synchronisation
    assert set(count_host_reads(run)) <= {"aten::_local_scalar_dense", "aten::nonzero",
                                          "aten::bincount", "Tensor.tolist"}


def test_counter_sees_host_reads_and_operations():
    """The counters are not blind: a loop of item() calls and extra operations are seen."""
    x = torch.randn(10)
    assert sum(count_host_reads(lambda: [x[i].item() for i in range(3)]).values()) == 3
    assert sum(count_host_reads(lambda: x[x > 0]).values()) >= 1
    assert sum(count_host_reads(lambda: x.tolist()).values()) == 1
    assert sum(count_ops(lambda: (x + 1).mul(2).exp()).values()) == 3
    assert sum(count_ops(lambda: x.view(2, 5).reshape(10)[:3]).values()) == 0


def _fast_and_reference(name, logits, targets, delta, **kwargs):
    x = logits.clone().requires_grad_(True)
    flat = targets.reshape(-1)
    if name == "rs":
        out = rank_sort_loss(x, targets, delta, **kwargs)
        (out[0] + out[1]).backward()
        ref = rank_sort_loss_reference(logits, targets, delta)
        ref_out = (ref["loss_rank"], ref["loss_sort"])
    elif name == "alrp":
        loc = torch.linspace(0.1, 0.9, int((flat == 1).sum()), dtype=logits.dtype)
        out = alrp_loss(x, targets, loc, delta, **kwargs)
        out[0].backward()
        ref = alrp_loss_reference(logits, targets, loc, delta)
        ref_out = (ref["loss_cls"], ref["loss_loc"])
    else:
        out = (ap_loss(x, targets, delta, **kwargs),)
        out[0].backward()
        ref = ap_loss_reference(logits, targets, delta)
        ref_out = (ref["loss"],)
    return out, x.grad, ref_out, ref["grad"]


@pytest.mark.parametrize("name", ["rs", "alrp", "ap"])
@pytest.mark.parametrize("seed", range(0, 48, 5))
@pytest.mark.parametrize("grid", [True, False])
def test_both_binnings_and_known_count_match_reference(name, seed, grid, monkeypatch):
    """The grid and the searchsorted binning, with and without ``num_positives``, and the
    sorted-pair RS path: values and gradients of the reference loop (float64)."""
    monkeypatch.setattr(step_sums, "GRID_MIN_POINTS", 0 if grid else 1 << 62)
    if seed % 2:
        monkeypatch.setattr(rank_sort_module, "DENSE_MAX_POSITIVES", 0)
    logits, targets, delta = random_case(seed, binary=name != "rs")
    if name == "rs":
        num_pos = int((targets > 0).sum())
    else:
        delta = max(delta, 0.25)
        num_pos = int((targets == 1).sum())
    for kwargs in ({}, {"num_positives": num_pos}):
        out, grad, ref_out, ref_grad = _fast_and_reference(name, logits, targets, delta, **kwargs)
        for a, b in zip(out, ref_out):
            assert abs(a.item() - b.item()) < 1e-9
        assert max_abs_diff(grad, ref_grad) < 1e-9


@pytest.mark.parametrize("name", ["rs", "alrp", "ap"])
@pytest.mark.parametrize("grid", [True, False])
def test_known_count_non_finite_logits_give_nan(name, grid, monkeypatch):
    """With ``num_positives`` nothing is read back, so NaN/Inf cannot raise: the loss is NaN."""
    monkeypatch.setattr(step_sums, "GRID_MIN_POINTS", 0 if grid else 1 << 62)
    logits, binary, ious, loc = _inputs(20, 500)
    for bad in (float("nan"), float("inf")):
        x = logits.clone()
        x[3] = bad
        targets = ious if name == "rs" else binary
        num_pos = int((targets > 0).sum()) if name == "rs" else loc.numel()
        if name == "rs":
            value = rank_sort_loss(x, targets, num_positives=num_pos)[0]
        elif name == "alrp":
            value = alrp_loss(x, targets, loc, num_positives=num_pos)[0]
        else:
            value = ap_loss(x, targets, num_positives=num_pos)
        assert torch.isnan(value)
        with pytest.raises(FloatingPointError):
            _step(name, x, binary, ious, loc)()
