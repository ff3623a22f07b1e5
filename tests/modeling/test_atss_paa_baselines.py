"""The standard ATSS and PAA heads (the baselines of RS-ATSS / RS-PAA): centerness / IoU targets
on hand-made cases, the losses against plain references written from the ATSS / PAA papers and
mmdet's ``atss_head.py`` / ``paa_head.py`` (focal loss by torchvision, GIoU / IoU by
torchvision), the head outputs, the test-time scores (s·q for ATSS, sqrt(s·v) for PAA, before
the threshold), the configs and a short training on `shapes`."""
import math

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou
from torchvision.ops import sigmoid_focal_loss as tv_focal

from rsloss_d2.modeling.ranking_retinanet.baseline_losses import (
    centerness_targets,
    focal_centerness_losses,
    focal_iou_pred_losses,
)


# ---------------------------------------------------------------- references (papers / mmdet)
def _ref_focal_sum(logits, labels):
    """Σ over non-ignored rows × classes of the sigmoid focal loss (α .25, γ 2), one-hot
    targets, background rows all zero."""
    c = logits.shape[1]
    total = 0.0
    for row, label in zip(logits, labels.tolist()):
        if label < 0:
            continue
        target = torch.zeros(c)
        if label < c:
            target[label] = 1.0
        total += float(tv_focal(row, target, alpha=0.25, gamma=2.0, reduction="sum"))
    return total


def _ref_bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _ref_giou_loss(pred, gt):
    return [1 - float(generalized_box_iou(p[None], g[None])[0, 0]) for p, g in zip(pred, gt)]


def _ref_iou(pred, gt):
    return [float(box_iou(p[None], g[None])[0, 0]) for p, g in zip(pred, gt)]


def _case(num_rows=30, num_classes=3, seed=0):
    """Random logits; rows 3, 7, 12 positive (classes 0, 2, 1), rows 20, 21 ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes, generator=g) * 2
    labels = torch.full((num_rows,), num_classes, dtype=torch.long)
    labels[[3, 7, 12]] = torch.tensor([0, 2, 1])
    labels[[20, 21]] = -1
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 8.0, 30.0, 28.0],
                            [30.0, 30.0, 62.0, 62.0]])
    gt = torch.tensor([[0.0, 0.0, 40.0, 20.0], [12.0, 6.0, 24.0, 40.0],
                       [20.0, 35.0, 70.0, 60.0]])
    pred = gt + torch.randn(3, 4, generator=g) * 3
    quality = torch.randn(3, generator=g)
    return logits, labels, pred, gt, anchors, quality


# ---------------------------------------------------------------- targets
def test_centerness_targets_by_hand():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0],     # centre (10, 10)
                            [5.0, 5.0, 15.0, 15.0],     # centre (10, 10)
                            [40.0, 40.0, 60.0, 60.0]])  # centre (50, 50)
    gt = torch.tensor([[0.0, 0.0, 40.0, 20.0],     # l 10, r 30, t 10, b 10
                       [2.0, 4.0, 14.0, 20.0],     # l 8, r 4, t 6, b 10
                       [30.0, 20.0, 70.0, 80.0]])  # l 20, r 20, t 30, b 30 (centred)
    expected = torch.tensor([math.sqrt(10 / 30 * 10 / 10), math.sqrt(4 / 8 * 6 / 10), 1.0])
    assert torch.allclose(centerness_targets(anchors, gt), expected, atol=1e-6)


def test_centerness_of_a_centre_outside_its_box_is_zero_not_nan():
    c = centerness_targets(torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
                           torch.tensor([[20.0, 20.0, 30.0, 30.0]]))
    assert c.tolist() == [0.0]


# ---------------------------------------------------------------- ATSS losses
def test_atss_losses_equal_the_reference():
    logits, labels, pred, gt, anchors, q = _case()
    pred.requires_grad_(True)
    per_image = torch.tensor([2, 1, 0])  # the third image has no positive: counts 1
    out = focal_centerness_losses(logits, labels, pred, gt, anchors, q, per_image)
    n = 2 + 1 + 1
    # anchor centres (10, 10), (20, 18), (46, 46) in their GTs: (l, r, t, b) = (10, 30, 10, 10),
    # (8, 4, 12, 22), (26, 24, 11, 14)
    c = [math.sqrt(10 / 30), math.sqrt(4 / 8 * 12 / 22), math.sqrt(24 / 26 * 11 / 14)]
    assert out.losses["loss_cls"].item() == pytest.approx(_ref_focal_sum(logits, labels) / n,
                                                          rel=1e-5)
    ref_ctr = sum(_ref_bce(float(qk), ck) for qk, ck in zip(q, c)) / n
    assert out.losses["loss_centerness"].item() == pytest.approx(ref_ctr, rel=1e-5)
    gl = _ref_giou_loss(pred.detach(), gt)
    ref_box = 2.0 * sum(ck * lk for ck, lk in zip(c, gl)) / sum(c)
    assert out.losses["loss_bbox"].item() == pytest.approx(ref_box, rel=1e-4)
    assert out.stats["mean_pos_centerness"].item() == pytest.approx(sum(c) / 3, rel=1e-6)
    out.losses["loss_bbox"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_atss_normalisers_are_averaged_over_processes():
    """N and Σc go through ``reduce_mean`` (another process with N = 8 and Σc = 3 simulated)."""
    logits, labels, pred, gt, anchors, q = _case()
    per_image = torch.tensor([2, 1, 0])
    local = focal_centerness_losses(logits, labels, pred, gt, anchors, q, per_image)
    other = iter([torch.tensor(8.0), torch.tensor(3.0)])  # N of the other process, then its Σc
    out = focal_centerness_losses(logits, labels, pred, gt, anchors, q, per_image,
                                  reduce_mean=lambda x: (x + next(other)) / 2)
    c_sum = local.stats["mean_pos_centerness"].item() * 3
    for key in ("loss_cls", "loss_centerness"):
        assert out.losses[key].item() == pytest.approx(local.losses[key].item() * 4 / 6, rel=1e-6)
    assert out.losses["loss_bbox"].item() == pytest.approx(
        local.losses["loss_bbox"].item() * c_sum / ((c_sum + 3) / 2), rel=1e-5)


def test_atss_without_positives_zero_box_and_centerness_in_the_graph():
    logits, labels, *_ = _case()
    labels = torch.where(labels >= 0, 3, labels)  # all background / ignored
    logits.requires_grad_(True)
    head_out = torch.randn(5, 5, requires_grad=True)
    empty_pred, empty_q = head_out[:0, :4], head_out[:0, 4]
    out = focal_centerness_losses(logits, labels, empty_pred, torch.zeros(0, 4),
                                  torch.zeros(0, 4), empty_q, torch.tensor([0, 0]))
    assert out.losses["loss_cls"].item() == pytest.approx(_ref_focal_sum(logits.detach(), labels)
                                                          / 2, rel=1e-5)
    assert out.losses["loss_bbox"].item() == 0 and out.losses["loss_centerness"].item() == 0
    sum(out.losses.values()).backward()
    assert torch.isfinite(head_out.grad).all() and torch.isfinite(logits.grad).all()
    assert out.stats["mean_pos_iou"] is None


# ---------------------------------------------------------------- PAA losses
def test_paa_losses_equal_the_reference():
    logits, labels, pred, gt, _, v = _case()
    out = focal_iou_pred_losses(logits, labels, pred, gt, v, num_images=2)
    assert out.losses["loss_cls"].item() == pytest.approx(_ref_focal_sum(logits, labels) / 3,
                                                          rel=1e-5)
    u = _ref_iou(pred, gt)
    ref_iou = 0.5 * sum(_ref_bce(float(vk), uk) for vk, uk in zip(v, u)) / 3
    assert out.losses["loss_iou"].item() == pytest.approx(ref_iou, rel=1e-4)
    gl = _ref_giou_loss(pred, gt)
    ref_box = 1.3 * sum(uk * lk for uk, lk in zip(u, gl)) / sum(u)
    assert out.losses["loss_bbox"].item() == pytest.approx(ref_box, rel=1e-4)
    # more images than positives: the focal normaliser is the number of images
    out = focal_iou_pred_losses(logits, labels, pred, gt, v, num_images=5)
    assert out.losses["loss_cls"].item() == pytest.approx(_ref_focal_sum(logits, labels) / 5,
                                                          rel=1e-5)


def test_paa_iou_target_is_detached():
    logits, labels, pred, gt, _, v = _case()
    pred.requires_grad_(True)
    v.requires_grad_(True)
    out = focal_iou_pred_losses(logits, labels, pred, gt, v, num_images=2)
    out.losses["loss_iou"].backward()
    assert pred.grad is None and v.grad.abs().sum() > 0


def test_paa_positives_with_zero_iou_give_a_finite_box_loss():
    logits, labels, pred, gt, _, v = _case()
    far = gt + 500  # no overlap: every u_k = 0
    out = focal_iou_pred_losses(logits, labels, far, gt, v, num_images=2)
    assert math.isfinite(out.losses["loss_bbox"].item())
    assert out.losses["loss_bbox"].item() == pytest.approx(
        1.3 * sum(_ref_giou_loss(far, gt)) / 3, rel=1e-4)


def test_paa_without_positives_zero_iou_and_box_in_the_graph():
    logits, labels, *_ = _case()
    labels = torch.where(labels >= 0, 3, labels)
    head_out = torch.randn(5, 5, requires_grad=True)
    out = focal_iou_pred_losses(logits, labels, head_out[:0, :4], torch.zeros(0, 4),
                                head_out[:0, 4], num_images=2)
    assert out.losses["loss_cls"].item() == pytest.approx(_ref_focal_sum(logits, labels) / 2,
                                                          rel=1e-5)
    assert out.losses["loss_iou"].item() == 0 and out.losses["loss_bbox"].item() == 0
    (out.losses["loss_iou"] + out.losses["loss_bbox"]).backward()
    assert head_out.grad is not None and torch.isfinite(head_out.grad).all()
