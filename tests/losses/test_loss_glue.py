"""Glue for the heads: targets, score weights, weighted mean, value balancing, aLRP self-balance."""
import pytest
import torch

from rsloss_d2.losses import (
    ALRPSelfBalance,
    positive_score_weights,
    score_weighted_mean,
    value_balanced,
    vectorize_labels,
)


def test_vectorize_labels_basic():
    labels = torch.tensor([0, 2, 3, -1, 1, 5])  # C = 3: 3 and 5 background, −1 ignored
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # row 4 (fg) ignored by weight
    out = vectorize_labels(labels, 3, label_weights=weights)
    expected = torch.tensor([
        [1, 0, 0],
        [0, 0, 1],
        [0, 0, 0],
        [-1, -1, -1],
        [-1, -1, -1],
        [0, 0, 0],
    ], dtype=torch.float32).reshape(-1)
    assert out.dtype == torch.float32 and out.shape == (18,)
    assert torch.equal(out, expected)


def test_vectorize_labels_ious():
    labels = torch.tensor([1, 2, 0, 2])  # C = 2: rows 0 and 2 are foreground
    per_fg = torch.tensor([0.7, 0.0])  # IoU 0 → negative for RS Loss (as in the official heads)
    out = vectorize_labels(labels, 2, ious=per_fg).reshape(4, 2)
    assert out.tolist() == [[0, 0.699999988079071], [0, 0], [0, 0], [0, 0]]
    per_row = torch.tensor([0.7, 0.9, 0.55, 0.3], dtype=torch.float64)
    out = vectorize_labels(labels, 2, ious=per_row).reshape(4, 2)
    assert out.dtype == torch.float64
    assert out.tolist() == [[0, 0.7], [0, 0], [0.55, 0], [0, 0]]
    with pytest.raises(ValueError):
        vectorize_labels(labels, 2, ious=torch.rand(3))


def test_vectorize_labels_matches_loss_order():
    """Positives of the flat vector appear in prediction order, like the IoU vector."""
    labels = torch.tensor([4, 1, 4, 0, 3])
    ious = torch.tensor([0.1, 0.2, 0.3])
    out = vectorize_labels(labels, 4, ious=ious)
    assert out[out > 0].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_positive_score_weights():
    logits = torch.tensor([[0.0, 2.0, -1.0], [-3.0, -4.0, -5.0]], requires_grad=True)
    w = positive_score_weights(logits)
    assert not w.requires_grad
    assert w.tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(),
                                        torch.sigmoid(torch.tensor(-3.0)).item()])
    w1 = positive_score_weights(torch.tensor([0.0, 1.0], dtype=torch.float16))
    assert w1.dtype == torch.float32 and w1.tolist() == pytest.approx([0.5, 0.7310586])
    assert positive_score_weights(torch.zeros(0, 80)).shape == (0,)


def test_score_weighted_mean():
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    w = torch.tensor([0.5, 0.25, 0.25])
    out = score_weighted_mean(losses, w)
    assert out.item() == pytest.approx((0.5 + 0.5 + 1.0) / 1.0)
    out.backward()
    assert losses.grad.tolist() == pytest.approx([0.5, 0.25, 0.25])
    # Σw below eps: the denominator is replaced by 1
    tiny = torch.tensor([1e-12, 1e-12, 0.0])
    assert score_weighted_mean(losses, tiny).item() == pytest.approx(3e-12)
    assert score_weighted_mean(losses, tiny, eps=1e-12).item() == pytest.approx(1.5)
    # no positive: attached zero
    empty = torch.zeros(0, requires_grad=True)
    z = score_weighted_mean(empty, torch.zeros(0))
    assert z.item() == 0 and z.requires_grad
    # (P, 4) losses: each row weighted by its w, denominator Σw
    rows = torch.ones(3, 4)
    assert score_weighted_mean(rows, w).item() == pytest.approx(4.0)


def test_value_balanced():
    x = torch.tensor(3.0, requires_grad=True)
    loss = x ** 2  # 9, d/dx = 6
    ref = torch.tensor(0.45, requires_grad=True)
    out = value_balanced(loss, ref)
    assert out.item() == pytest.approx(0.45)
    out.backward()
    assert x.grad.item() == pytest.approx(0.45 / 9 * 6)
    assert ref.grad is None  # λ is detached


def test_value_balanced_zero_loss():
    x = torch.tensor(0.0, requires_grad=True)
    out = value_balanced(x * 2, torch.tensor(0.7))
    assert out.item() == 0 and torch.isfinite(out)
    out.backward()
    assert x.grad.item() == 0


def test_alrp_self_balance_update_rule():
    sb = ALRPSelfBalance(period=3)
    assert sb.weight.item() == 50.0
    cls = [0.9, 0.8, 0.7, 0.5, 0.5, 0.5]
    loc = [0.2, 0.4, 0.3, 0.1, 0.1, 0.1]
    for k in range(2):
        assert sb.update(torch.tensor(cls[k]), torch.tensor(loc[k])).item() == 50.0
    w = sb.update(torch.tensor(cls[2]), torch.tensor(loc[2]))
    assert w.item() == pytest.approx((0.3 + 0.8) / 0.3, rel=1e-6)  # (mean loc + mean cls)/mean loc
    assert sb.stats.abs().sum() == 0 and int(sb.num_calls) == 0
    for k in range(3, 6):
        w = sb.update(torch.tensor(cls[k]), torch.tensor(loc[k]))
    assert w.item() == pytest.approx(6.0, rel=1e-6)


def test_alrp_self_balance_checkpoint_and_reduce():
    sb = ALRPSelfBalance(period=4)
    sb.update(torch.tensor(1.0), torch.tensor(0.5))
    sb.update(torch.tensor(1.0), torch.tensor(0.5))
    state = {k: v.clone() for k, v in sb.state_dict().items()}
    fresh = ALRPSelfBalance(period=4)
    fresh.load_state_dict(state)
    assert fresh.weight.item() == 50.0
    fresh.update(torch.tensor(0.0), torch.tensor(0.5))
    assert fresh.weight.item() == 50.0  # 3 calls so far
    fresh.update(torch.tensor(0.0), torch.tensor(0.5))
    assert fresh.weight.item() == pytest.approx((0.5 + 0.5) / 0.5)  # all 4 calls count
    # reduce_fn sees [Σcls, Σloc, count] and its result is used (simulates a second process)
    seen = []

    def fake_all_reduce(x):
        seen.append(x.clone())
        return x + torch.tensor([3.0, 0.2, 1.0], dtype=x.dtype)

    synced = ALRPSelfBalance(period=1, reduce_fn=fake_all_reduce)
    synced.update(torch.tensor(1.0), torch.tensor(0.2))
    assert seen[0].tolist() == pytest.approx([1.0, 0.2, 1.0])
    assert synced.weight.item() == pytest.approx((0.2 + 2.0) / 0.2)  # means over 2 "processes"
    assert synced.weight.dtype == torch.float32
