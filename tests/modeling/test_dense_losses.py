"""The dense-head loss recipes (aLRP + GIoU + self-balance, AP + SmoothL1) against the
per-positive reference loops of rsloss_d2.losses.reference and hand-written GIoU / SmoothL1 /
target vectors (AP Loss, aLRP Loss and RS Loss papers)."""
import pytest
import torch

from rsloss_d2.losses import ALRPSelfBalance
from rsloss_d2.losses.reference import alrp_loss_reference, ap_loss_reference
from rsloss_d2.modeling.ranking_retinanet import alrp_dense_losses, ap_dense_losses


def _giou_loss(a, b):
    """1 − GIoU, one pair at a time (plain formula)."""
    out = []
    for p, g in zip(a, b):
        iw = (torch.min(p[2], g[2]) - torch.max(p[0], g[0])).clamp(min=0)
        ih = (torch.min(p[3], g[3]) - torch.max(p[1], g[1])).clamp(min=0)
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        hull = (torch.max(p[2], g[2]) - torch.min(p[0], g[0])) * (
            torch.max(p[3], g[3]) - torch.min(p[1], g[1]))
        out.append(1 - (inter / union - (hull - union) / hull))
    return torch.stack(out)


def _targets(labels, num_classes):
    """Hand-built flat target vector: 1 at (k, l_k), whole row −1 if ignored."""
    rows = []
    for lab in labels.tolist():
        if lab < 0:
            rows.append([-1.0] * num_classes)
        else:
            rows.append([1.0 if c == lab else 0.0 for c in range(num_classes)])
    return torch.tensor(rows, dtype=torch.float64).flatten()


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    num, num_classes = 40, 3
    logits = torch.randn(num, num_classes, generator=g, dtype=torch.float64) * 2
    labels = torch.full((num,), num_classes)
    labels[torch.randperm(num, generator=g)[:6]] = -1
    pos = torch.randperm(num, generator=g)[:7]
    labels[pos] = torch.randint(0, num_classes, (7,), generator=g)
    num_pos = int(((labels >= 0) & (labels < num_classes)).sum())
    xy = torch.rand(num_pos, 2, generator=g, dtype=torch.float64) * 20
    gt = torch.cat([xy, xy + 5 + torch.rand(num_pos, 2, generator=g, dtype=torch.float64) * 20], 1)
    pred = gt + torch.randn(num_pos, 4, generator=g, dtype=torch.float64) * 3
    pred[:, 2:] = torch.max(pred[:, 2:], pred[:, :2] + 1)
    return logits, labels, pred, gt


@pytest.mark.parametrize("seed", [0, 1])
def test_alrp_dense_losses_match_the_reference_and_self_balance(seed):
    logits, labels, pred, gt = _case(seed)
    logits.requires_grad_()
    pred.requires_grad_()
    sb = ALRPSelfBalance(period=1, init_weight=50.0)
    out = alrp_dense_losses(logits, labels, pred, gt, sb, delta=1.0)
    loc = _giou_loss(pred.detach(), gt)
    ref = alrp_loss_reference(logits.detach(), _targets(labels, 3), loc, delta=1.0)
    assert float(out.losses["loss_cls"]) == pytest.approx(float(ref["loss_cls"]), rel=1e-9)
    # period 1: the first update already applies, w = (L_loc + L_cls) / L_loc
    weight = (ref["loss_loc"] + ref["loss_cls"]) / ref["loss_loc"]
    assert float(out.stats["self_balance_weight"]) == pytest.approx(float(weight), rel=1e-6)
    assert float(out.losses["loss_bbox"]) == pytest.approx(
        float(ref["loss_loc"] + ref["loss_cls"]), rel=1e-6)
    (out.losses["loss_cls"] + out.losses["loss_bbox"]).backward()
    assert torch.allclose(logits.grad.flatten(), ref["grad"], atol=1e-12)
    # box gradient: w × ∂L_loc with the detached ranks of the reference
    pred_ref = pred.detach().clone().requires_grad_()
    loc_ref = _giou_loss(pred_ref, gt)
    desc = ref["order"].flip(0)
    l_loc = (torch.cumsum(loc_ref[desc], 0) / ref["rank"][desc]).mean()
    (l_loc * float(out.stats["self_balance_weight"])).backward()
    assert torch.allclose(pred.grad, pred_ref.grad, rtol=1e-5, atol=1e-9)


def test_alrp_dense_losses_without_positive_do_not_update_the_self_balance():
    logits, labels, pred, gt = _case(0)
    labels = torch.where(labels >= 0, torch.full_like(labels, 3), labels)  # no positive
    sb = ALRPSelfBalance(period=1, init_weight=50.0)
    out = alrp_dense_losses(logits.requires_grad_(), labels, pred[:0].requires_grad_(), gt[:0], sb)
    assert float(out.losses["loss_cls"]) == 0 and float(out.losses["loss_bbox"]) == 0
    assert int(sb.num_calls) == 0 and float(sb.weight) == 50.0
    sum(out.losses.values()).backward()
    assert (logits.grad == 0).all()


def test_ap_dense_losses_match_the_reference_and_smooth_l1():
    logits, labels, _, _ = _case(3)
    g = torch.Generator().manual_seed(1)
    num_pos = int(((labels >= 0) & (labels < 3)).sum())
    pred = torch.randn(num_pos, 4, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.randn(num_pos, 4, generator=g, dtype=torch.float64)
    logits.requires_grad_()
    out = ap_dense_losses(logits, labels, pred, target, delta=1.0, smooth_l1_beta=1.0)
    ref = ap_loss_reference(logits.detach(), _targets(labels, 3), delta=1.0)
    assert float(out.losses["loss_cls"]) == pytest.approx(float(ref["loss"]), rel=1e-9)
    diff = (pred.detach() - target).abs()
    sl1 = torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum() / (4 * num_pos)
    assert float(out.losses["loss_bbox"]) == pytest.approx(float(sl1), rel=1e-9)
    out.losses["loss_cls"].backward()
    assert torch.allclose(logits.grad.flatten(), ref["grad"], atol=1e-12)
