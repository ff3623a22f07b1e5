"""AP Loss: fast implementation vs the per-positive loop written from the paper (float64)."""
import pytest
import torch

from rsloss_d2.losses import ap_loss
from rsloss_d2.losses.reference import ap_loss_reference

from _ranking_cases import EXAMPLE_BINARY_TARGETS, EXAMPLE_LOGITS, max_abs_diff, random_case


# every test on both paths of the loss (tests/conftest.py): the PyTorch one and the compiled C one
LOSS_PATHS = ("eager", "compiled")


def _fast(logits, targets, delta):
    x = logits.clone().requires_grad_(True)
    loss = ap_loss(x, targets, delta=delta)
    loss.backward()
    return loss, x.grad


def test_worked_example():
    """Small worked example (δ = 1), hand-checked numbers."""
    s = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    t = torch.tensor(EXAMPLE_BINARY_TARGETS, dtype=torch.float64)
    loss, grad = _fast(s, t, 1.0)
    assert loss.item() == pytest.approx(0.190824, abs=1e-6)
    assert grad.tolist() == pytest.approx(
        [0, 0, 0.090574, -0.100877, 0, -0.089947, 0.100251, 0], abs=1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_random(seed):
    logits, targets, delta = random_case(seed, binary=True)
    loss, grad = _fast(logits, targets, delta)
    ref = ap_loss_reference(logits, targets, delta)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref["loss"].item()) < 1e-9
    assert max_abs_diff(grad, ref["grad"]) < 1e-9


def test_interpolation_branch():
    """A positive whose precision is below the running max takes the interpolated branch."""
    # ascending: positive a (s=0) prec 1/(1+1)=0.5 ... constructed so that the lower positive has
    # higher precision than the upper one: p_low = 1 > p_up.
    s = torch.tensor([-3.0, 3.0, 3.0], dtype=torch.float64)  # pos, pos, neg (tied with pos 1)
    t = torch.tensor([1, 1, 0], dtype=torch.float64)
    loss, grad = _fast(s, t, 1.0)
    # pos 0 (s=−3): rank+ = 1 + H(6) = 2, N_FP = 1 → prec 2/3 (visited first, max = 2/3)
    # pos 1 (s=3): rank+ = 1, N_FP = H(0) = 0.5 → prec 2/3 → equal: first branch, p̂ = 2/3.
    assert loss.item() == pytest.approx(1 / 3, abs=1e-12)
    s2 = torch.tensor([-3.0, 3.0, 3.5, -2.5], dtype=torch.float64)  # two negatives
    t2 = torch.tensor([1, 1, 0, 0], dtype=torch.float64)
    loss2, grad2 = _fast(s2, t2, 1.0)
    ref = ap_loss_reference(s2, t2, 1.0)
    assert abs(loss2.item() - ref["loss"].item()) < 1e-12
    assert max_abs_diff(grad2, ref["grad"]) < 1e-12
    # pos 0: rank+ 2, N_FP = H(6.5) + H(0.5) = 1.75 → prec 2/3.75; pos 1: rank+ 1,
    # N_FP = H(0.5) = 0.75 → prec 1/1.75 = 0.571 > 0.533: max moves.
    assert loss2.item() == pytest.approx(1 - (2 / 3.75 + 1 / 1.75) / 2, abs=1e-12)
    s3 = torch.tensor([-3.0, 3.0, 3.9, -2.5, -2.9], dtype=torch.float64)
    t3 = torch.tensor([1, 1, 0, 0, 0], dtype=torch.float64)
    loss3, grad3 = _fast(s3, t3, 1.0)
    ref3 = ap_loss_reference(s3, t3, 1.0)
    # pos 0: rank+ 2, N_FP = 1 + H(0.5) + H(0.1) = 1 + 0.75 + 0.55 = 2.3 → prec 2/4.3 = 0.465;
    # pos 1: rank+ 1, N_FP = H(0.9) = 0.95 → prec 1/1.95 = 0.513 → max moves again.
    assert abs(loss3.item() - ref3["loss"].item()) < 1e-12
    assert max_abs_diff(grad3, ref3["grad"]) < 1e-12
    s4 = torch.tensor([-3.0, 3.0, 3.9, 3.8], dtype=torch.float64)
    t4 = torch.tensor([1, 1, 0, 0], dtype=torch.float64)
    # pos 0: rank+ 2, N_FP 2 → 0.5 (max 0.5); pos 1: rank+ 1, N_FP = 0.95 + 0.9 = 1.85 →
    # prec 0.351 < 0.5 → interpolated: p̂ = 0.5, negatives get ×(1 − 0.5)/(1 − 0.351).
    loss4, grad4 = _fast(s4, t4, 1.0)
    ref4 = ap_loss_reference(s4, t4, 1.0)
    assert loss4.item() == pytest.approx(0.5, abs=1e-12)
    assert max_abs_diff(grad4, ref4["grad"]) < 1e-12
    prec1 = 1 / 2.85
    factor = 0.5 / (1 - prec1)
    w0, w1 = 1 / 4 / 2, factor / 2.85 / 2
    assert grad4[2].item() == pytest.approx(w0 * 1 + w1 * 0.95, abs=1e-12)
    assert grad4[3].item() == pytest.approx(w0 * 1 + w1 * 0.9, abs=1e-12)
    assert grad4[:2].tolist() == pytest.approx([-0.25, -0.25], abs=1e-12)
