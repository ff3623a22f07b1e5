"""Edge cases shared by the three ranking losses: empty/ignored inputs, ties, NaN, dtypes, AMP."""
import pytest
import torch

from rsloss_d2.losses import alrp_loss, ap_loss, rank_sort_loss
from rsloss_d2.losses.reference import (
    alrp_loss_reference,
    ap_loss_reference,
    rank_sort_loss_reference,
)

from _ranking_cases import max_abs_diff, random_case

# every test on both paths of the loss (tests/conftest.py): the PyTorch one and the compiled C one
LOSS_PATHS = ("eager", "compiled")
LOSSES = ["rs", "alrp", "ap"]


def _loc(targets, dtype=torch.float64):
    n = int((targets.reshape(-1) == 1).sum())
    return torch.linspace(0.1, 0.9, n, dtype=dtype)


def run(name, logits, targets, delta=None, backward=True):
    """Run a loss; returns (values tuple, grad of the logits). Gradient of the official output."""
    x = logits.detach().clone().requires_grad_(True)
    if name == "rs":
        out = rank_sort_loss(x, targets, 0.5 if delta is None else delta)
        total = out[0] + out[1]
    elif name == "alrp":
        out = alrp_loss(x, targets, _loc(targets), 1.0 if delta is None else delta)
        total = out[0]
    else:
        out = (ap_loss(x, targets, 1.0 if delta is None else delta),)
        total = out[0]
    if backward:
        total.backward()
    return out, x.grad


def reference(name, logits, targets, delta=None):
    if name == "rs":
        r = rank_sort_loss_reference(logits, targets, 0.5 if delta is None else delta)
        return (r["loss_rank"], r["loss_sort"]), r["grad"]
    if name == "alrp":
        r = alrp_loss_reference(logits, targets, _loc(targets), 1.0 if delta is None else delta)
        return (r["loss_cls"], r["loss_loc"]), r["grad"]
    r = ap_loss_reference(logits, targets, 1.0 if delta is None else delta)
    return (r["loss"],), r["grad"]


def assert_matches_reference(name, logits, targets, delta=None, tol=1e-9):
    out, grad = run(name, logits, targets, delta)
    ref_out, ref_grad = reference(name, logits, targets, delta)
    for a, b in zip(out, ref_out):
        assert abs(a.item() - b.item()) < tol
    assert max_abs_diff(grad, ref_grad) < tol
    return out, grad


@pytest.mark.parametrize("name", LOSSES)
def test_no_positive(name):
    logits = torch.randn(50, dtype=torch.float64)
    targets = torch.zeros(50, dtype=torch.float64)
    targets[:5] = -1
    out, grad = run(name, logits, targets)
    for v in out:
        assert v.item() == 0 and torch.isfinite(v)
    assert out[0].requires_grad
    assert grad is not None and grad.abs().max() == 0


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_and_empty(name):
    logits = torch.randn(4, 5, dtype=torch.float64)
    out, grad = run(name, logits, -torch.ones(4, 5, dtype=torch.float64))
    assert all(v.item() == 0 for v in out) and grad.abs().max() == 0
    out, grad = run(name, torch.zeros(0, dtype=torch.float64), torch.zeros(0))
    assert all(v.item() == 0 for v in out) and grad.shape == (0,)


def test_alrp_no_positive_loc_is_attached():
    loc = torch.zeros(0, requires_grad=True)
    loss_cls, loss_loc = alrp_loss(torch.randn(6, requires_grad=True), torch.zeros(6), loc)
    assert loss_loc.requires_grad and loss_loc.item() == 0
    loss_loc.backward()
    assert loc.grad.shape == (0,)


@pytest.mark.parametrize("name", LOSSES)
def test_one_positive(name):
    logits = torch.tensor([0.3, 0.1, 0.9, -2.0, 0.4], dtype=torch.float64)
    targets = torch.tensor([0.8 if name == "rs" else 1, 0, 0, 0, -1], dtype=torch.float64)
    out, grad = assert_matches_reference(name, logits, targets, tol=1e-12)
    # negatives 0.1 and 0.9 are relevant; the ignored 0.4 and the far −2.0 get nothing
    assert grad[3].item() == 0 and grad[4].item() == 0 and grad[2].item() > grad[1].item() > 0
    assert grad[0].item() < 0


@pytest.mark.parametrize("name", LOSSES)
def test_all_logits_equal(name):
    logits = torch.full((30,), 0.7, dtype=torch.float64)
    targets = torch.zeros(30, dtype=torch.float64)
    targets[::3] = 0.6 if name == "rs" else 1
    targets[1] = -1
    out, grad = assert_matches_reference(name, logits, targets, tol=1e-12)
    # every H is 1/2: N_FP = 19/2 = 9.5 (19 negatives); RS rank+ = 10/2
    if name == "rs":
        assert out[0].item() == pytest.approx(9.5 / (5 + 9.5), abs=1e-12)
    else:
        assert out[0].item() == pytest.approx(9.5 / (1 + 4.5 + 9.5), abs=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_positives_below_every_negative(name):
    logits = torch.cat([torch.tensor([-20.0, -17.0, -14.0, -11.0]), torch.linspace(3, 5, 20)])
    logits = logits.double()
    targets = torch.zeros(24, dtype=torch.float64)
    targets[:4] = torch.tensor([0.9, 0.5, 0.7, 0.2]).double() if name == "rs" else 1.0
    out, grad = assert_matches_reference(name, logits, targets, tol=1e-12)
    # N_FP = 20 for every positive; positives 3δ+ apart: h = 3, 2, 1, 0 positives above each
    h = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    expected = {
        "rs": (20 / (20 + 0.5 + h)).mean(),  # rank+ = 1/2 (self) + h
        "alrp": (20 / (21 + h)).mean(),  # rank+ = 1 + h
        # ascending order: the first (lowest) positive has the highest precision, 4/24
        "ap": 1 - torch.tensor(4 / 24, dtype=torch.float64),
    }[name]
    assert out[0].item() == pytest.approx(expected.item(), abs=1e-12)
    # all negatives are above every positive + δ: they all get the same gradient
    assert torch.allclose(grad[4:], grad[4:].mean().expand(20), atol=1e-15)
    assert (grad[4:] > 0).all() and (grad[:4] < 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_ties_between_positives_and_negatives(name):
    # every positive tied with a negative, several tied positives, differences of exactly ±δ
    logits = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5, -0.5, 1.5, 2.0, 2.0], dtype=torch.float64)
    pos = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    targets = torch.zeros(10, dtype=torch.float64)
    targets[pos] = torch.tensor([0.5, 0.5, 0.9, 0.3, 0.6]).double() if name == "rs" else 1.0
    for delta in ([0.5, 0.0, 1.0] if name == "rs" else [0.5, 1.0]):
        assert_matches_reference(name, logits, targets, delta, tol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise(name, bad):
    logits = torch.randn(20)
    logits[7] = bad
    targets = torch.zeros(20)
    targets[:3] = 1
    loss_name = {"rs": "rank_sort_loss", "alrp": "alrp_loss", "ap": "ap_loss"}[name]
    with pytest.raises(FloatingPointError, match=loss_name):
        run(name, logits, targets)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_computed_in_fp32(name, dtype):
    logits, targets, _ = random_case(11, binary=name != "rs")
    low = logits.to(dtype)
    out, grad = run(name, low, targets)
    assert all(v.dtype == torch.float32 for v in out)
    assert grad.dtype == dtype
    # same numbers as the fp32 computation of the same (rounded) logits
    out32, grad32 = run(name, low.float(), targets)
    ref_out, ref_grad = reference(name, low.double(), targets)
    for a, b, r in zip(out, out32, ref_out):
        assert a.item() == b.item()
        assert abs(a.item() - r.item()) < 1e-5
    assert max_abs_diff(grad, grad32.to(dtype)) == 0
    assert max_abs_diff(grad32, ref_grad) < 1e-5


@pytest.mark.parametrize("name", LOSSES)
def test_under_cpu_autocast(name):
    logits, targets, _ = random_case(12, binary=name != "rs")
    feats = torch.randn(logits.numel(), 4, dtype=torch.float32)
    weight = torch.randn(4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        produced = feats @ weight  # bf16 under autocast
        assert produced.dtype == torch.bfloat16
        x = produced.reshape(logits.shape)
        if name == "rs":
            out = rank_sort_loss(x, targets)
            total = out[0] + out[1]
        elif name == "alrp":
            out = alrp_loss(x, targets, _loc(targets, torch.float32))
            total = out[0]
        else:
            out = (ap_loss(x, targets),)
            total = out[0]
    assert all(v.dtype == torch.float32 for v in out)
    total.backward()
    ref_out, ref_grad = reference(name, x.detach().double(), targets)
    for a, r in zip(out, ref_out):
        assert abs(a.item() - r.item()) < 1e-5
    expected_weight_grad = feats.double().T @ ref_grad.reshape(-1)
    assert torch.allclose(weight.grad.double(), expected_weight_grad, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", LOSSES)
def test_float32_close_to_float64(name):
    logits, targets, _ = random_case(21, binary=name != "rs")
    out, grad = run(name, logits.float(), targets.float())
    ref_out, ref_grad = reference(name, logits.float().double(), targets)
    assert all(v.dtype == torch.float32 for v in out)
    for a, r in zip(out, ref_out):
        assert abs(a.item() - r.item()) < 1e-5
    assert max_abs_diff(grad, ref_grad) < 1e-6


@pytest.mark.parametrize("name", LOSSES)
def test_integer_targets_and_2d_shapes(name):
    logits, targets, _ = random_case(22, binary=True)
    logits = logits.reshape(-1)[:120].reshape(30, 4)
    targets = targets.reshape(-1)[:120].reshape(30, 4)
    targets[0, 0] = 1
    out, grad = run(name, logits, targets.long())
    ref_out, ref_grad = reference(name, logits, targets)
    assert grad.shape == (30, 4)
    assert max_abs_diff(grad, ref_grad) < 1e-12
    for a, r in zip(out, ref_out):
        assert abs(a.item() - r.item()) < 1e-12


def test_shape_mismatch_and_bad_delta():
    with pytest.raises(ValueError):
        rank_sort_loss(torch.randn(5), torch.zeros(6))
    with pytest.raises(ValueError):
        rank_sort_loss(torch.randn(5), torch.zeros(5), delta=-1)
    with pytest.raises(ValueError):
        ap_loss(torch.randn(5), torch.zeros(5), delta=0)
    with pytest.raises(ValueError):
        alrp_loss(torch.randn(5), torch.zeros(5), torch.zeros(0), delta=0)


@pytest.mark.parametrize("name", LOSSES)
def test_huge_finite_logits_stay_finite(name):
    """Logits near the float32 limit do not break the grid (no NaN, no crash)."""
    logits = torch.tensor([3e38, -3e38, 0.0, 1.0, -1.0, 3.2e38, -3.3e38, 2.0])
    targets = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
    if name == "rs":
        targets = targets * 0.5
    out, grad = run(name, logits, targets)
    assert all(torch.isfinite(v) for v in out)
    assert torch.isfinite(grad).all()
    # same as the float64 computation on the same numbers
    out64, grad64 = run(name, logits.double(), targets.double())
    for a, b in zip(out, out64):
        assert abs(a.item() - b.item()) < 1e-6
    assert max_abs_diff(grad, grad64) < 1e-6
