"""Closed-form checks of the RS head building blocks: IoU / GIoU / dice, the mmdet-style matcher,
and the shared RS + GIoU + value-balancing recipe (targets, λ, gradients, no positives)."""
import pytest
import torch

import rsloss_d2.modeling.box_losses as box_losses
from rsloss_d2.losses import dice_loss, rank_sort_loss
from rsloss_d2.modeling.box_losses import (
    aligned_iou,
    giou_loss,
    rs_detection_losses,
    rs_mask_scalars,
    rs_scalars,
)
from rsloss_d2.modeling.matchers import MaxIoUMatcher
from rsloss_d2.modeling.roi_heads.rs_mask_head import DICE_EPS


def test_iou_and_giou_closed_form():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    # pair 0: inter 1, union 7, enclosing 9; pair 1: identical; pair 2: disjoint, enclosing 3
    assert torch.allclose(aligned_iou(a, b), torch.tensor([1 / 7, 1.0, 0.0]), atol=1e-6)
    expected_giou = torch.tensor([1 / 7 - 2 / 9, 1.0, 0.0 - (3 - 2) / 3])
    assert torch.allclose(giou_loss(a, b), 1 - expected_giou, atol=1e-6)


def test_mask_head_dice_closed_form():
    """RS-Mask R-CNN's dice adds eps once to Σp² + Σm² (SOLO's adds it to each sum)."""
    probs = torch.full((1, 2, 2), 0.5)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # 1 - 2*0.5 / (4*0.25 + 1 + 1e-5)
    assert DICE_EPS == 1e-5
    once = dice_loss(probs, target, DICE_EPS, eps_per_sum=False)
    assert torch.allclose(once, torch.tensor([1 - 1 / (2 + 1e-5)]), rtol=0, atol=1e-7)
    per_sum = dice_loss(probs.double(), target.double(), 1e-1)  # 1 - 1 / (2 + 0.2)
    assert torch.allclose(per_sum, torch.tensor([1 - 1 / 2.2], dtype=torch.float64))
    perfect = torch.tensor([[[30.0, -30.0], [-30.0, -30.0]]]).sigmoid()
    assert dice_loss(perfect, target, DICE_EPS, eps_per_sum=False).item() < 1e-5


def test_matcher_min_pos_iou_and_reassignment():
    # pred 2 overlaps GT0 most (0.45, ignore band) but is GT1's best prediction (0.40 >= 0.3):
    # mmdet makes it a positive of GT1 (Detectron2's Matcher would keep GT0). GT2's best IoU 0.25
    # is below min_pos_iou 0.3: it hands out no low-quality match.
    iou = torch.tensor([[0.60, 0.10, 0.45, 0.00],
                        [0.00, 0.05, 0.40, 0.20],
                        [0.25, 0.00, 0.00, 0.10]])
    matcher = MaxIoUMatcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True,
                            min_pos_iou=0.3)
    matches, labels = matcher(iou)
    assert labels.tolist() == [1, 0, 1, 0]
    assert matches[0].item() == 0 and matches[2].item() == 1
    iou2 = torch.tensor([[0.45, 0.10, 0.20, 0.00]])
    matches, labels = matcher(iou2)
    assert labels.tolist() == [1, 0, 0, 0]
    no_lq = MaxIoUMatcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    assert no_lq(iou2)[1].tolist() == [-1, 0, 0, 0]


def _case(requires_grad=True):
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=requires_grad)
    labels = torch.tensor([1, 3, 0, -1, 2])  # C = 3: rows 0, 2, 4 positive, 1 bg, 3 ignored
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 20.0], [20.0, 0.0, 30.0, 8.0]])
    pred = (gt + torch.tensor([[1.0, 0.0, 1.0, 2.0], [0.0, -2.0, 3.0, 0.0], [-1.0, 1.0, 2.0, 0.0]]))
    pred = pred.clone().requires_grad_(requires_grad)
    return logits, labels, pred, gt


def test_rs_targets_are_ious_at_gt_class(monkeypatch):
    seen = {}

    def spy(logits, targets, delta=0.5):
        seen["targets"] = targets.clone()
        return rank_sort_loss(logits, targets, delta)

    monkeypatch.setattr(box_losses, "rank_sort_loss", spy)
    logits, labels, pred, gt = _case()
    out = rs_detection_losses(logits, labels, pred, gt)
    ious = aligned_iou(pred.detach(), gt)
    expected = torch.zeros(5, 3)
    expected[0, 1], expected[2, 0], expected[4, 2] = ious[0], ious[1], ious[2]
    expected[3] = -1
    assert torch.allclose(seen["targets"].reshape(5, 3), expected)
    assert out.num_pos == 3 and torch.allclose(out.ious, ious)
    # score weights: detached max sigmoid over all classes of the positive rows
    assert torch.allclose(out.score_weights, torch.sigmoid(logits.detach()[[0, 2, 4]]).amax(1))


def test_value_balancing_value_and_gradient():
    logits, labels, pred, gt = _case()
    out = rs_detection_losses(logits, labels, pred, gt)
    # value: λ·L_box equals L_rank + L_sort (the paper's total counts each task once)
    assert torch.allclose(out.loss_box, out.loss_rank + out.loss_sort)
    # gradient: λ times that of the unbalanced score-weighted GIoU loss, written from the paper
    w = torch.sigmoid(logits.detach()[[0, 2, 4]]).amax(1)
    pred_ref = pred.detach().clone().requires_grad_(True)
    plain = (w * giou_loss(pred_ref, gt)).sum() / w.sum()
    plain.backward()
    out.loss_box.backward()
    lam = (out.loss_rank + out.loss_sort).detach() / plain.detach()
    assert torch.allclose(out.box_lambda, lam)
    assert torch.allclose(pred.grad, lam * pred_ref.grad, atol=1e-6)
    assert not torch.allclose(pred.grad, pred_ref.grad)  # λ != 1 here, so the check bites


def test_no_positive_gives_connected_zeros():
    logits = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([2, 2, -1, 2])
    deltas = torch.randn(4, 4, requires_grad=True)
    pred = deltas[(labels >= 0) & (labels < 2)]  # empty, but part of the graph
    out = rs_detection_losses(logits, labels, pred, torch.zeros(0, 4))
    total = out.loss_rank + out.loss_sort + out.loss_box
    assert total.item() == 0 and out.num_pos == 0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(deltas.grad, torch.zeros_like(deltas))


def test_positive_with_zero_iou_becomes_negative():
    """Official rule "positive ⇔ target > 0": a positive whose box misses its GT is a negative."""
    logits = torch.tensor([[2.0], [1.0], [0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], requires_grad=True)
    out = rs_detection_losses(logits, labels, pred, gt)
    # one positive (row 0) at the top: ranking error 0, sorting error 0
    assert out.loss_rank.item() == pytest.approx(0.0)
    assert out.num_pos == 2 and out.ious.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_autocast_inputs_are_computed_in_fp32():
    logits, labels, pred, gt = _case()
    ref = rs_detection_losses(logits, labels, pred, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rs_detection_losses(logits.bfloat16(), labels, pred.bfloat16(), gt)
    for name in ("loss_rank", "loss_sort", "loss_box"):
        value = getattr(out, name)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert abs(value.item() - getattr(ref, name).item()) < 0.05
    out.loss_box.backward()
    assert torch.isfinite(pred.grad).all()


def test_rs_scalars_fixed_names_and_values():
    """Every family logs the RS recipe's result under the same names (written from the recipe:
    positives per image, λ, the score-weighted GIoU loss before λ, mean IoU target)."""
    logits, labels, pred, gt = _case()
    out = rs_detection_losses(logits, labels, pred, gt)
    stats = rs_scalars(out, num_images=2)
    assert list(stats) == ["num_pos", "lambda_bbox", "loss_bbox_unbalanced", "mean_pos_iou"]
    assert stats["num_pos"] == 1.5  # 3 positives over 2 images
    w = torch.sigmoid(logits.detach()[[0, 2, 4]]).amax(1)
    plain = (w * giou_loss(pred.detach(), gt)).sum() / w.sum()
    assert torch.allclose(stats["loss_bbox_unbalanced"], plain)
    assert torch.allclose(stats["lambda_bbox"], (out.loss_rank + out.loss_sort) / plain)
    assert torch.allclose(stats["mean_pos_iou"], aligned_iou(pred.detach(), gt).mean())
    # no positive: the mean IoU is undefined (None: not logged), λ and L_box are 0
    none = rs_scalars(rs_detection_losses(logits, torch.full_like(labels, 3), pred[:0], gt[:0]), 4)
    assert none["num_pos"] == 0 and none["mean_pos_iou"] is None
    assert float(none["lambda_bbox"]) == 0 and float(none["loss_bbox_unbalanced"]) == 0
    assert rs_mask_scalars(0.25, 4.0) == {"lambda_mask": 4.0, "loss_mask_unbalanced": 0.25}
