"""The Gumbel / DropLoss / EQL / dice losses keep float64 inputs in float64 (half precision is
raised to float32), so `torch.autograd.gradcheck` can check their backward against finite
differences, the official clamped BCE backward included where it equals the analytic gradient."""
import pytest
import torch

from rsloss_d2.losses import gumbel_binary_cross_entropy, gumbel_cross_entropy
from rsloss_d2.losses.dice import dice_loss
from rsloss_d2.losses.drop_loss import drop_loss, eql_loss
from rsloss_d2.losses.gumbel import binary_cross_entropy_elementwise


def _logits(shape, seed=0):
    """float64 logits in [-3, 9]: inside the clamp [-4, 10] and away from the region
    [-4, -3.32) where the official backward divides by 1e-12 instead of p (1 - p)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 12 - 3).requires_grad_()


def _one_hot(n, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=g), k).double()


@pytest.mark.parametrize("dtype,expected", [
    (torch.float64, torch.float64), (torch.float32, torch.float32),
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
def test_output_dtype(dtype, expected):
    x = _logits((5, 4)).detach().to(dtype)
    y = _one_hot(5, 4).to(dtype)
    assert gumbel_binary_cross_entropy(x, y).dtype == expected
    assert gumbel_cross_entropy(x, y).dtype == expected
    assert gumbel_cross_entropy(x[:0], y[:0]).dtype == expected
    assert binary_cross_entropy_elementwise(x, y, "sigmoid").dtype == expected
    labels = torch.tensor([0, 3, 4, 1, 4])
    tail = torch.tensor([True, False, True, False])
    assert drop_loss(x, labels, tail).dtype == expected
    assert eql_loss(x, labels, tail, activation="sigmoid").dtype == expected
    assert drop_loss(x[:0], labels[:0], tail).dtype == expected


def test_float64_value_matches_the_formula_beyond_float32_precision():
    """fp64 result equals -[y log p + (1-y) log(1-p)] with p = exp(-exp(-x)) to 1e-12."""
    x = torch.tensor([[0.3, 7.9, -2.2]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    p = torch.exp(-torch.exp(-x))
    ref = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    torch.testing.assert_close(gumbel_binary_cross_entropy(x, y), ref, rtol=1e-12, atol=0)


def test_gradcheck_gumbel_bce_and_gumbel_cross_entropy():
    x, y = _logits((6, 5)), _one_hot(6, 5)
    assert torch.autograd.gradcheck(lambda t: gumbel_binary_cross_entropy(t, y), (x,))
    w = torch.rand(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda t: gumbel_cross_entropy(t, y), (x,))
    assert torch.autograd.gradcheck(
        lambda t: gumbel_cross_entropy(t, y, weight=w, avg_factor=3.0), (x,))


@pytest.mark.parametrize("activation", ["gumbel", "sigmoid"])
def test_gradcheck_drop_loss_and_eql(activation):
    x = _logits((7, 4))
    labels = torch.tensor([0, 4, 2, 4, 1, 3, 4])
    tail = torch.tensor([True, False, True, False])
    assert torch.autograd.gradcheck(lambda t: eql_loss(t, labels, tail, activation), (x,))
    # the random drops are redrawn on every call: the same generator seed for each evaluation
    def fn(t):
        g = torch.Generator().manual_seed(5)
        return drop_loss(t, labels, tail, activation, generator=g)

    assert torch.autograd.gradcheck(fn, (x,))


def test_gradcheck_dice_loss():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(3, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    target = (torch.rand(3, 4, 4, generator=g) > 0.5).double()
    assert dice_loss(pred, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: dice_loss(t, target), (pred,))
