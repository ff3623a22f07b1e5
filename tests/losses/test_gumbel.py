"""Gumbel activation and Gumbel cross-entropy (GOL paper Eq. 5, 7; official gumbel_ce.py):
hand-computed values and gradients (both clamped regions, the official 1e-12 BCE-backward
region), comparison with the official probability-space formula, autocast and extreme logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from rsloss_d2.losses import gumbel_activation, gumbel_binary_cross_entropy, gumbel_cross_entropy


def official_gumbel_ce_elementwise(logits, targets):
    """The official code path (GOL README / gumbel_ce.py) in float64: clamp, 1/exp(exp(-x)),
    PyTorch's binary_cross_entropy (logs clamped at -100, backward / max(p(1-p), 1e-12))."""
    x = torch.clamp(logits, min=-4, max=10)
    p = 1 / torch.exp(torch.exp(-x))
    return F.binary_cross_entropy(p, targets, reduction="none")


def test_activation_values_and_no_clamp():
    x = torch.tensor([0.0, -2.0, 2.0, -5.0, 12.0])
    expected = [math.exp(-1), math.exp(-math.exp(2)), math.exp(-math.exp(-2)),
                math.exp(-math.exp(5)), math.exp(-math.exp(-12))]
    torch.testing.assert_close(gumbel_activation(x), torch.tensor(expected), rtol=1e-6, atol=0)
    # no clamp at test time: -5 is below the training clamp but gives its own (smaller) score
    assert gumbel_activation(torch.tensor(-5.0)) < gumbel_activation(torch.tensor(-4.0))
    x = torch.tensor([-1.0, 0.5], requires_grad=True)
    gumbel_activation(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(-x.detach()) * gumbel_activation(x.detach()))


# (logit, target, loss, gradient) computed by hand from p = exp(-exp(-x)) and the BCE
HAND_CASES = [
    (0.0, 1.0, 1.0, -1.0),                                      # -log p = e^0, d/dx = -e^{-x}
    (0.0, 0.0, -math.log(1 - math.exp(-1)), math.exp(-1) / (1 - math.exp(-1))),
    (-2.0, 1.0, math.exp(2), -math.exp(2)),
    (2.0, 0.0, -math.log(1 - math.exp(-math.exp(-2))),
     math.exp(-2) * math.exp(-math.exp(-2)) / (1 - math.exp(-math.exp(-2)))),
    # official BCE-backward region [-4, -3.32): p(1-p) < 1e-12, gradient (p-1) p e^{-x} / 1e-12
    (-3.5, 1.0, math.exp(3.5),
     (math.exp(-math.exp(3.5)) - 1) * math.exp(-math.exp(3.5)) * math.exp(3.5) / 1e-12),
    # lower clamped region: value of x = -4, zero gradient
    (-5.0, 1.0, math.exp(4), 0.0),
    (-1e4, 1.0, math.exp(4), 0.0),
    # upper clamped region: value of x = 10, zero gradient
    (12.0, 0.0, -math.log(1 - math.exp(-math.exp(-10))), 0.0),
    (1e4, 1.0, math.exp(-10), 0.0),
]


@pytest.mark.parametrize("x,y,loss,grad", HAND_CASES)
def test_elementwise_hand_cases(x, y, loss, grad):
    logits = torch.tensor([x], requires_grad=True)
    value = gumbel_binary_cross_entropy(logits, torch.tensor([y]))
    value.sum().backward()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss, rel=1e-5)
    assert logits.grad.item() == pytest.approx(grad, rel=1e-4, abs=1e-12)


def test_official_region_differs_from_analytic():
    """At x = -3.5 the official gradient is -0.137, the analytic one -33.1 (documented)."""
    logits = torch.tensor([-3.5], requires_grad=True)
    gumbel_binary_cross_entropy(logits, torch.ones(1)).sum().backward()
    assert logits.grad.item() == pytest.approx(-0.1375, abs=2e-3)
    assert abs(logits.grad.item()) < 0.01 * math.exp(3.5)


def test_clamp_boundaries_keep_gradient():
    """The official (torch 1.7) clamp passes the gradient at the bounds themselves."""
    logits = torch.tensor([10.0, -4.0], requires_grad=True)
    gumbel_binary_cross_entropy(logits, torch.tensor([0.0, 1.0])).sum().backward()
    p10 = math.exp(-math.exp(-10))
    assert logits.grad[0].item() == pytest.approx(math.exp(-10) * p10 / (1 - p10), rel=1e-3)
    assert logits.grad[1].item() < 0


def test_matches_official_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(64, 9, generator=g, dtype=torch.float64) * 18 - 6)
    # stay off the clamp bounds, where torch >= 2's clamp backward differs from torch 1.7's
    logits = logits[((logits + 4).abs() > 1e-3).all(1) & ((logits - 10).abs() > 1e-3).all(1)]
    targets = torch.zeros_like(logits)
    targets[torch.arange(len(logits)), torch.randint(0, 9, (len(logits),), generator=g)] = 1
    ref_x = logits.clone().requires_grad_(True)
    ref = official_gumbel_ce_elementwise(ref_x, targets)
    ref.sum().backward()
    x = logits.float().requires_grad_(True)
    out = gumbel_binary_cross_entropy(x, targets.float())
    out.sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-6)


def test_reduction_weights_avg_factor_and_clamp():
    logits = torch.tensor([[0.0, -2.0, 1.0], [3.0, 0.5, -1.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0], [0.5]])
    elem = official_gumbel_ce_elementwise(logits.detach().double(), targets.double())
    # no avg_factor: mean over all R*K elements (weights do not normalise)
    loss = gumbel_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(elem.mean().item(), rel=1e-5)
    expected = (elem * weight.double()).mean().item()
    loss = gumbel_cross_entropy(logits, targets, weight=weight)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    expected = (elem * weight.double()).sum().item() / 2
    loss = gumbel_cross_entropy(logits, targets, weight=weight, avg_factor=2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    # reduced loss above 20 is clamped: value 20, zero gradient
    big = torch.full((2, 3), -4.5, requires_grad=True)  # each positive costs e^4 = 54.6
    loss = gumbel_cross_entropy(big, torch.eye(3)[:2], avg_factor=1)
    loss.backward()
    assert loss.item() == 20.0 and big.grad.abs().sum() == 0
    big = torch.full((2, 3), -3.0, requires_grad=True)
    loss = gumbel_cross_entropy(big, torch.eye(3)[:2], avg_factor=1)
    loss.backward()
    assert loss.item() == 20.0 and big.grad.abs().sum() == 0


def test_empty_input_is_zero_attached():
    logits = torch.zeros(0, 5, requires_grad=True)
    loss = gumbel_cross_entropy(logits, torch.zeros(0, 5), avg_factor=1)
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_extreme_logits_low_precision(dtype):
    logits = torch.tensor([[-1e4, 1e4, 0.0, -60000.0, 60000.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    loss = gumbel_cross_entropy(logits, targets, avg_factor=1)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.dtype == dtype
    # same values as fp32 on the clamped logits
    ref = gumbel_cross_entropy(logits.detach().float(), targets, avg_factor=1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_no_nan(dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 7)
    feats = torch.randn(32, 16) * 1e3  # huge features: logits far outside [-4, 10]
    targets = F.one_hot(torch.randint(0, 7, (32,)), 7).float()
    with torch.autocast("cpu", dtype=dtype):
        logits = layer(feats)
        assert logits.dtype == dtype
        loss = gumbel_cross_entropy(logits, targets, avg_factor=32)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(layer.weight.grad).all()
