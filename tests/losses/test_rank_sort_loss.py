"""RS Loss: fast implementation vs the per-positive loop written from the paper (float64)."""
import pytest
import torch

from rsloss_d2.losses import rank_sort_loss
from rsloss_d2.losses.reference import rank_sort_loss_reference

from _ranking_cases import EXAMPLE_LOGITS, EXAMPLE_RS_TARGETS, max_abs_diff, random_case


# every test on both paths of the loss (tests/conftest.py): the PyTorch one and the compiled C one
LOSS_PATHS = ("eager", "compiled")


def _fast(logits, targets, delta):
    x = logits.clone().requires_grad_(True)
    loss_rank, loss_sort = rank_sort_loss(x, targets, delta=delta)
    (loss_rank + loss_sort).backward()
    return loss_rank, loss_sort, x.grad


def test_worked_example():
    """Small worked example (δ = 0.5): values and gradient, hand-checked numbers."""
    s = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    t = torch.tensor(EXAMPLE_RS_TARGETS, dtype=torch.float64)
    loss_rank, loss_sort, grad = _fast(s, t, 0.5)
    # Exact fractions: L_rank = (0 + 0.3611… + 0.2916…)/3, L_sort = 0.029411…/3.
    assert loss_rank.item() == pytest.approx((1.3 / 3.6 + 0.7 / 2.4) / 3, abs=1e-12)
    assert loss_sort.item() == pytest.approx(0.029411764705882 / 3, abs=1e-12)
    assert loss_rank.item() == pytest.approx(0.217593, abs=1e-6)
    assert loss_sort.item() == pytest.approx(0.009804, abs=1e-6)
    expected = [0, 0, 0.097222, -0.110566, 0, -0.107026, 0.120370, 0]
    assert grad.tolist() == pytest.approx(expected, abs=1e-6)
    assert grad[[0, 1, 4, 7]].abs().max() == 0  # positive 0 (top), irrelevant/ignored entries


def test_reference_reproduces_worked_example():
    s = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    t = torch.tensor(EXAMPLE_RS_TARGETS, dtype=torch.float64)
    ref = rank_sort_loss_reference(s, t, 0.5)
    assert ref["loss_rank"].item() == pytest.approx(0.217593, abs=1e-6)
    assert ref["grad"].tolist() == pytest.approx(
        [0, 0, 0.097222, -0.110566, 0, -0.107026, 0.120370, 0], abs=1e-6)


@pytest.mark.parametrize("seed", range(48))
def test_matches_reference_random(seed):
    logits, targets, delta = random_case(seed, binary=False)
    loss_rank, loss_sort, grad = _fast(logits, targets, delta)
    ref = rank_sort_loss_reference(logits, targets, delta)
    assert loss_rank.dtype == torch.float64
    assert abs(loss_rank.item() - ref["loss_rank"].item()) < 1e-9
    assert abs(loss_sort.item() - ref["loss_sort"].item()) < 1e-9
    assert max_abs_diff(grad, ref["grad"]) < 1e-9


def test_many_negatives_grid_path():
    """Large N exercises the uniform-grid bins, pure and breakpoint cells, and outliers."""
    g = torch.Generator().manual_seed(7)
    n, p = 30000, 40
    logits = torch.randn(n + p, generator=g, dtype=torch.float64)
    targets = torch.zeros(n + p, dtype=torch.float64)
    targets[:p] = torch.rand(p, generator=g, dtype=torch.float64).clamp_min(0.05)
    logits[:p] += 1.0
    # negatives exactly on breakpoints s_i ± δ and at the positives, and far outliers
    logits[p:2 * p] = logits[:p] - 0.5
    logits[2 * p:3 * p] = logits[:p] + 0.5
    logits[3 * p:4 * p] = logits[:p]
    logits[-3:] = torch.tensor([1e30, -1e30, 50.0], dtype=torch.float64)
    loss_rank, loss_sort, grad = _fast(logits, targets, 0.5)
    ref = rank_sort_loss_reference(logits, targets, 0.5)
    assert abs(loss_rank.item() - ref["loss_rank"].item()) < 1e-9
    assert abs(loss_sort.item() - ref["loss_sort"].item()) < 1e-9
    assert max_abs_diff(grad, ref["grad"]) < 1e-9


def test_delta_zero_hard_step_ties():
    """δ = 0: H(x) = 1[x ≥ 0], so a negative tied with a positive counts fully."""
    s = torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.8, 0.0, 0.0, 0.0], dtype=torch.float64)
    loss_rank, loss_sort, grad = _fast(s, t, 0.0)
    # rank+ = 1 (self), N_FP = 2 (the tie and the 2.0): ℓ_R = 2/3.
    assert loss_rank.item() == pytest.approx(2 / 3, abs=1e-12)
    assert loss_sort.item() == 0
    assert grad.tolist() == pytest.approx([-2 / 3, 1 / 3, 0, 1 / 3], abs=1e-12)


def test_sort_output_gradient_is_ignored():
    """Official RankSort backward: the full gradient rides on loss_rank; loss_sort's upstream
    gradient is dropped."""
    logits, targets, delta = random_case(5, binary=False)
    ref = rank_sort_loss_reference(logits, targets, delta)["grad"]
    x = logits.clone().requires_grad_(True)
    loss_rank, loss_sort = rank_sort_loss(x, targets, delta)
    (0.2 * loss_rank + 7.0 * loss_sort).backward()
    assert max_abs_diff(x.grad, 0.2 * ref) < 1e-12
    x.grad = None
    loss_rank, loss_sort = rank_sort_loss(x, targets, delta)
    (loss_rank + loss_sort).backward()  # g, not 2g
    assert max_abs_diff(x.grad, ref) < 1e-12
    x.grad = None
    _, loss_sort = rank_sort_loss(x, targets, delta)
    loss_sort.backward()
    assert x.grad.abs().max() == 0


def test_sorting_only_example():
    """No negative at all: only the sorting part acts; a lower-IoU positive above a higher one."""
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    loss_rank, loss_sort, grad = _fast(s, t, 0.5)
    # positive 1 (y=0.9, s=0): H(1) = 1 from positive 0; rank+ = 1.5; ℓ_S = (0.8 + 0.05)/1.5;
    # ℓ*_S = 0.1; e_S = 0.4666…, D = 1 → g_1 = −e_S, g_0 = +e_S; positive 0: e_S = 0.
    e = (0.8 + 0.05) / 1.5 - 0.1
    assert loss_rank.item() == 0
    assert loss_sort.item() == pytest.approx(e / 2, abs=1e-12)
    assert grad.tolist() == pytest.approx([e / 2, -e / 2], abs=1e-12)


def test_ranking_eps_skip_keeps_value():
    """N_FP ≤ 1e-10: no ranking gradient for that positive (official RankSort forward)."""
    # Positive 0 (s=5) sees one negative at 4.5 + 1e-12: N_FP(0) = 1e-12 ≤ 1e-10, step skipped.
    # Positive 1 (s=0) sees both negatives (H = 1 and 0.7).
    s = torch.tensor([5.0, 0.0, 4.5 + 1e-12, 0.2], dtype=torch.float64)
    t = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    loss_rank, _, grad = _fast(s, t, 0.5)
    ref = rank_sort_loss_reference(s, t, 0.5)
    assert abs(loss_rank.item() - ref["loss_rank"].item()) < 1e-12
    assert max_abs_diff(grad, ref["grad"]) < 1e-12
    assert grad[0].item() == 0  # −ℓ_R(0)/|P| ≈ −3e-13 would be applied without the eps test
    assert grad[1].item() == pytest.approx(-(1.7 / 3.2) / 2, abs=1e-12)  # rank = 1.5 + 1.7


@pytest.mark.parametrize("seed", range(0, 48, 3))
def test_sorted_pair_path_matches_reference(seed, monkeypatch):
    """The O(P log² P) positive–positive path (used above DENSE_MAX_POSITIVES) is exact too."""
    import rsloss_d2.losses.rank_sort as rank_sort_module

    monkeypatch.setattr(rank_sort_module, "DENSE_MAX_POSITIVES", 0)
    logits, targets, delta = random_case(seed, binary=False)
    loss_rank, loss_sort, grad = _fast(logits, targets, delta)
    ref = rank_sort_loss_reference(logits, targets, delta)
    assert abs(loss_rank.item() - ref["loss_rank"].item()) < 1e-9
    assert abs(loss_sort.item() - ref["loss_sort"].item()) < 1e-9
    assert max_abs_diff(grad, ref["grad"]) < 1e-9


def test_ranking_eps_threshold_is_1e10():
    """N_FP = 1e-7 is above the RS eps (1e-10): the ranking step is applied (aLRP's 1e-5 would
    skip it)."""
    s = torch.tensor([5.0, 4.5 + 2e-7, 0.0, 0.2], dtype=torch.float64)  # H(−0.5 + 2e-7) = 2e-7
    t = torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    loss_rank, _, grad = _fast(s, t, 0.5)
    ref = rank_sort_loss_reference(s, t, 0.5)
    assert max_abs_diff(grad, ref["grad"]) < 1e-12
    # positive 0: N_FP = 2e-7 > 1e-10, so it gets −ℓ_R(0)/|P| ≈ −2e-7/1.5/2
    assert grad[0].item() < -1e-8
