"""DropLoss / EQL of the GOL repository (official droploss.py / eql.py): which entries are kept or
dropped on hand-made batches (fixed generator), values and gradients vs a plain reference, the
no-foreground batch, a class absent from training, extreme logits and autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from rsloss_d2.losses import drop_loss, drop_loss_weights, eql_loss, tail_class_mask

TAIL = torch.tensor([False, True, True, False])  # C = 4, classes 1 and 2 are tail
BG = 4


def reference_keep(labels, tail, u, random_drop):
    """The rule of droploss.py / eql.py with Python loops (u: the (n, C) uniform draws)."""
    labels = [int(v) for v in labels]
    num_classes = len(tail)
    fg_rows = [g for g in labels if g != num_classes]
    ratio = (sum(bool(tail[g]) for g in fg_rows) / len(fg_rows)) if fg_rows else float("nan")
    keep = []
    for i, g in enumerate(labels):
        row = []
        for c in range(num_classes):
            fg = g != num_classes
            r = (not fg) and random_drop and (u[i][c] > ratio)  # NaN ratio: False
            w = (int(r) + int(fg)) * int(bool(tail[c]))
            y = int(g == c)
            row.append(1 - w * (1 - y))
        keep.append(row)
    return torch.tensor(keep, dtype=torch.float32), ratio


def official_elementwise(logits, targets):
    """Official Gumbel BCE in float64 (clamp, 1/exp(exp(-x)), PyTorch BCE)."""
    p = 1 / torch.exp(torch.exp(-torch.clamp(logits, -4, 10)))
    return F.binary_cross_entropy(p, targets, reduction="none")


def test_tail_class_mask_strict_and_absent_class():
    # f = [0, 5/300, 33/300, 200/300]; lambda 0.11 (strict): 33/300 = 0.11 is not tail
    mask = tail_class_mask([0, 5, 33, 200], 300, 0.11)
    assert mask.tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        tail_class_mask([1, 2], 0, 0.1)


def test_fixed_entries_without_randomness():
    """ratio 0 (no tail foreground): every tail negative of a background row is dropped
    (u > 0); foreground rows drop their tail negatives, never their positive."""
    labels = torch.tensor([0, 3, BG, BG])
    gen = torch.Generator().manual_seed(0)
    targets, keep, ratio = drop_loss_weights(labels, TAIL, generator=gen)
    assert ratio.item() == 0.0
    expected = torch.tensor([[1, 0, 0, 1],   # fg head row: tail negatives removed
                             [1, 0, 0, 1],
                             [1, 0, 0, 1],   # bg rows: tail columns dropped (u > 0)
                             [1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(keep, expected)
    assert torch.equal(targets, F.one_hot(labels, 5)[:, :4].float())
    # ratio 1 (all foreground is tail): u > 1 never, background rows keep everything
    labels = torch.tensor([1, 2, BG])
    _, keep, ratio = drop_loss_weights(labels, TAIL, generator=torch.Generator().manual_seed(0))
    assert ratio.item() == 1.0
    assert keep.tolist() == [[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]]  # positives kept


def test_random_drops_follow_the_rule_with_fixed_generator():
    labels = torch.tensor([1, 0, BG, BG, 3, BG, BG, BG])  # ratio = 1/3
    _, keep, ratio = drop_loss_weights(labels, TAIL, generator=torch.Generator().manual_seed(5))
    u = torch.rand((8, 4), generator=torch.Generator().manual_seed(5))
    expected, ref_ratio = reference_keep(labels, TAIL.tolist(), u.tolist(), random_drop=True)
    assert ratio.item() == pytest.approx(ref_ratio)
    assert torch.equal(keep, expected)
    # the draws matter: some background tail entries kept, some dropped with this seed
    bg_tail = keep[labels == BG][:, 1:3]
    assert 0 < bg_tail.sum() < bg_tail.numel()
    # same generator state -> same drops; drop frequency ~ 1 - ratio over many rows
    labels = torch.cat([torch.tensor([1, 0, 3]), torch.full((3000,), BG)])
    _, keep, _ = drop_loss_weights(labels, TAIL, generator=torch.Generator().manual_seed(1))
    dropped = 1 - keep[3:, 1:3].mean().item()
    assert dropped == pytest.approx(2 / 3, abs=0.02)


def test_eql_keeps_background_rows():
    labels = torch.tensor([1, 0, BG, BG])
    _, keep, _ = drop_loss_weights(labels, TAIL, random_drop=False)
    expected, _ = reference_keep(labels, TAIL.tolist(), [[0] * 4] * 4, random_drop=False)
    assert torch.equal(keep, expected)
    assert keep[2:].eq(1).all()


@pytest.mark.parametrize("activation", ["gumbel", "sigmoid"])
def test_drop_loss_value_and_gradient(activation):
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([1, 0, BG, BG, 2, BG])
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    logits[0, 1] = -3.6  # a positive in the official 1e-12 region
    logits[3, 2] = 11.0  # a clamped negative
    x = logits.float().requires_grad_(True)
    loss, ratio = drop_loss(x, labels, TAIL, activation, generator=torch.Generator().manual_seed(9),
                            loss_weight=2.0, return_ratio=True)
    loss.backward()
    u = torch.rand((6, 4), generator=torch.Generator().manual_seed(9))
    keep, ref_ratio = reference_keep(labels, TAIL.tolist(), u.tolist(), random_drop=True)
    targets = F.one_hot(labels, 5)[:, :4].double()
    ref_x = logits.clone().requires_grad_(True)
    if activation == "gumbel":
        elem = official_elementwise(ref_x, targets)
    else:
        elem = F.binary_cross_entropy_with_logits(ref_x, targets, reduction="none")
    ref = 2.0 * (elem * keep.double()).sum() / 6
    ref.backward()
    assert ratio.item() == pytest.approx(ref_ratio)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-7)


def test_eql_value():
    labels = torch.tensor([2, BG, 0])
    logits = torch.tensor([[0.5, -1.0, 2.0, -3.0], [1.0, 0.0, -2.0, 4.0], [3.0, 1.0, 1.0, 0.0]])
    keep, _ = reference_keep(labels, TAIL.tolist(), [[0] * 4] * 3, random_drop=False)
    ref = (official_elementwise(logits.double(), F.one_hot(labels, 5)[:, :4].double())
           * keep.double()).sum() / 3
    assert eql_loss(logits, labels, TAIL).item() == pytest.approx(ref.item(), rel=1e-5)


def test_no_foreground_batch_official_behaviour():
    """ratio = NaN (0/0): no background entry is dropped; loss = plain BCE sum / n, finite."""
    labels = torch.full((5,), BG)
    logits = torch.randn(5, 4, requires_grad=True)
    loss, ratio = drop_loss(logits, labels, TAIL, return_ratio=True,
                            generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isnan(ratio.item())
    ref = official_elementwise(logits.detach().double(), torch.zeros(5, 4, dtype=torch.float64))
    assert loss.item() == pytest.approx(ref.sum().item() / 5, rel=1e-5)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_empty_batch_and_absent_class():
    logits = torch.zeros(0, 4, requires_grad=True)
    loss = drop_loss(logits, torch.zeros(0, dtype=torch.long), TAIL)
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    # class 0 never seen in training: count 0 -> tail; it only ever appears as a negative
    tail = tail_class_mask([0, 50, 400, 3], 500, 0.05)
    assert tail.tolist() == [True, False, False, True]
    labels = torch.tensor([1, 2, 4, 4])
    x = torch.randn(4, 4, requires_grad=True)
    loss = drop_loss(x, labels, tail, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[:2, 0].eq(0).all()  # tail negatives of foreground rows are dropped


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["gumbel", "sigmoid"])
def test_extreme_logits_and_autocast(dtype, activation):
    labels = torch.tensor([1, 0, BG, BG])
    logits = torch.tensor([[-1e4, 1e4, -6e4, 6e4]] * 4, dtype=dtype, requires_grad=True)
    loss = drop_loss(logits, labels, TAIL, activation, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    layer = torch.nn.Linear(8, 4)
    with torch.autocast("cpu", dtype=dtype):
        out = layer(torch.randn(4, 8) * 1e4)
        loss = eql_loss(out, labels, TAIL, activation)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(layer.weight.grad).all()
