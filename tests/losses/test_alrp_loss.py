"""aLRP Loss: fast implementation vs the per-positive loop written from the paper (float64)."""
import pytest
import torch

from rsloss_d2.losses import alrp_loss
from rsloss_d2.losses.reference import alrp_loss_reference

from _ranking_cases import (
    EXAMPLE_BINARY_TARGETS,
    EXAMPLE_LOC_ERRORS,
    EXAMPLE_LOGITS,
    max_abs_diff,
    random_case,
)


# every test on both paths of the loss (tests/conftest.py): the PyTorch one and the compiled C one
LOSS_PATHS = ("eager", "compiled")


def _loc_errors(targets, seed):
    num_pos = int((targets == 1).sum())
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.rand(num_pos, generator=g, dtype=torch.float64) * 1.5


def _fast(logits, targets, loc, delta):
    x = logits.clone().requires_grad_(True)
    loc = loc.clone().requires_grad_(True)
    loss_cls, loss_loc = alrp_loss(x, targets, loc, delta=delta)
    loss_cls.backward()
    return loss_cls, loss_loc, x.grad, loc


def _expected_loc_grad(rank, order):
    """∂L_loc/∂ℓ(π(q)) = (1/|P|) Σ_{m ≥ q} 1/rank(π(m)) over the descending order π."""
    desc = order.flip(0)
    inv = 1.0 / rank[desc]
    per_pos = inv.flip(0).cumsum(0).flip(0) / rank.numel()
    out = torch.empty_like(rank)
    out[desc] = per_pos
    return out


def test_worked_example():
    """Small worked example (δ = 1), hand-checked numbers."""
    s = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    t = torch.tensor(EXAMPLE_BINARY_TARGETS, dtype=torch.float64)
    loc = torch.tensor(EXAMPLE_LOC_ERRORS, dtype=torch.float64)
    loss_cls, loss_loc, grad, loc_leaf = _fast(s, t, loc, 1.0)
    assert loss_cls.item() == pytest.approx(0.190824, abs=1e-6)
    assert loss_loc.item() == pytest.approx((0.2 / 1.05 + 0.5 / 3.15 + 1.0 / 3.8) / 3, abs=1e-12)
    assert grad.tolist() == pytest.approx(
        [0, 0, 0.125321, -0.135526, 0, -0.128571, 0.138777, 0], abs=1e-6)
    assert loc_leaf.grad is None  # loss_cls gives nothing to the localisation errors
    ref = alrp_loss_reference(s, t, loc, 1.0)
    assert ref["rank"].tolist() == pytest.approx([1.05, 3.8, 3.15], abs=1e-12)
    assert ref["order"].tolist() == [1, 2, 0]


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_random(seed):
    logits, targets, delta = random_case(seed, binary=True)
    loc = _loc_errors(targets, seed)
    loss_cls, loss_loc, grad, _ = _fast(logits, targets, loc, delta)
    ref = alrp_loss_reference(logits, targets, loc, delta)
    assert loss_cls.dtype == torch.float64
    assert abs(loss_cls.item() - ref["loss_cls"].item()) < 1e-9
    assert abs(loss_loc.item() - ref["loss_loc"].item()) < 1e-9
    assert max_abs_diff(grad, ref["grad"]) < 1e-9


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_loc_gradient_goes_to_loc_errors_only(seed):
    logits, targets, delta = random_case(seed, binary=True)
    loc = _loc_errors(targets, seed)
    x = logits.clone().requires_grad_(True)
    loc_leaf = loc.clone().requires_grad_(True)
    _, loss_loc = alrp_loss(x, targets, loc_leaf, delta)
    loss_loc.backward()
    assert x.grad is None  # ranks are detached
    ref = alrp_loss_reference(logits, targets, loc, delta)
    assert max_abs_diff(loc_leaf.grad, _expected_loc_grad(ref["rank"], ref["order"])) < 1e-12


def test_eps_skip():
    """N_FP(i) ≤ 1e-5 → g_fg[i] = 0 and no negative gets anything from i (official aLRPLoss
    forward)."""
    # positive 0 at 5 with one negative at 4 + 2e-6 (H = 1e-6);
    # positive 1 at 0 with a negative at 0.
    s = torch.tensor([5.0, 0.0, 4.0 + 2e-6, 0.0], dtype=torch.float64)
    t = torch.tensor([1, 1, 0, 0], dtype=torch.float64)
    loc = torch.tensor([0.3, 0.4], dtype=torch.float64)
    loss_cls, _, grad, _ = _fast(s, t, loc, 1.0)
    ref = alrp_loss_reference(s, t, loc, 1.0)
    assert max_abs_diff(grad, ref["grad"]) < 1e-12
    assert abs(loss_cls.item() - ref["loss_cls"].item()) < 1e-12
    assert grad[0].item() == 0
    # The negative near positive 0 gets only positive 1's share: H(4 − 0) = 1 → (1 · w_1) / 2.
    rank1 = 2 + 1.5  # rank+(1) = 1 + H(5) = 2, N_FP(1) = H(4 + 2e-6) + H(0) = 1 + 0.5
    g1 = (0.3 * 1 + 1.5) / rank1
    assert grad[1].item() == pytest.approx(-g1 / 2, abs=1e-12)
    assert grad[2].item() == pytest.approx(g1 / 1.5 * 1 / 2, abs=1e-12)
    assert grad[3].item() == pytest.approx(g1 / 1.5 * 0.5 / 2, abs=1e-12)


def test_wrong_number_of_loc_errors():
    s = torch.randn(10, dtype=torch.float64)
    t = torch.zeros(10)
    t[:3] = 1
    with pytest.raises(ValueError, match="loc_errors"):
        alrp_loss(s, t, torch.rand(2))


def test_eps_threshold_is_1e5():
    """N_FP = 2e-5 > 1e-5: the step is applied for that positive."""
    s = torch.tensor([5.0, 4.0 + 4e-5], dtype=torch.float64)  # H(−1 + 4e-5) = 2e-5 (δ = 1)
    t = torch.tensor([1, 0], dtype=torch.float64)
    loc = torch.tensor([0.3], dtype=torch.float64)
    _, _, grad, _ = _fast(s, t, loc, 1.0)
    ref = alrp_loss_reference(s, t, loc, 1.0)
    assert max_abs_diff(grad, ref["grad"]) < 1e-12
    fp = 2e-5
    assert grad[0].item() == pytest.approx(-fp / (1 + fp), rel=1e-6)
    assert grad[1].item() == pytest.approx(fp / (1 + fp), rel=1e-6)  # H · (−g_0) / N_FP
