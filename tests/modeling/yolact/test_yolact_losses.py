"""YOLACT / RS-YOLACT losses against plain per-image / per-positive references."""
import torch
import torch.nn.functional as F

from rsloss_d2.losses import rank_sort_loss, vectorize_labels
from rsloss_d2.modeling.box_losses import aligned_iou, giou_loss
from rsloss_d2.modeling.yolact.losses import (
    ohem_classification_loss,
    rs_yolact_losses,
    sample_masks_to_train,
    semantic_segmentation_loss,
    smooth_l1_box_loss,
    yolact_mask_loss,
)
from rsloss_d2.modeling.yolact.targets import YOLACTTargets


def reference_ohem(logits, state, labels, ratio):
    """mmdet loss_single_OHEM per image, summed, divided by sum_i max(n_i, 1)."""
    k = logits.shape[-1] - 1
    total, norm = 0.0, 0
    for i in range(logits.shape[0]):
        pos = [a for a in range(logits.shape[1]) if state[i, a] == 1]
        neg = [a for a in range(logits.shape[1]) if state[i, a] != 1]
        ce = {}
        for a in range(logits.shape[1]):
            t = int(labels[i, a]) if state[i, a] == 1 else k
            w = 0.0 if state[i, a] < 0 else 1.0
            ce[a] = w * float(F.cross_entropy(logits[i, a][None], torch.tensor([t])))
        n_neg = len(neg) if not pos else min(ratio * len(pos), len(neg))
        hard = sorted((ce[a] for a in neg), reverse=True)[:n_neg]
        total += sum(ce[a] for a in pos) + sum(hard)
        norm += max(len(pos), 1)
    return total / norm


def test_ohem_equals_reference():
    g = torch.Generator().manual_seed(0)
    b, r, k = 3, 40, 4
    logits = torch.randn(b, r, k + 1, generator=g) * 2
    state = torch.randint(-1, 2, (b, r), generator=g)
    state[1] = torch.where(state[1] == 1, torch.zeros_like(state[1]), state[1])  # no positive
    state[2, :35] = 1  # more positives than ratio x negatives allows: all negatives kept
    labels = torch.randint(0, k, (b, r), generator=g)
    got, norm = ohem_classification_loss(logits, state, labels, 3)
    want = reference_ohem(logits, state, labels, 3)
    assert abs(float(got) - want) < 1e-5 * max(1.0, want)
    assert float(norm) == sum(max(int((state[i] == 1).sum()), 1) for i in range(b))


def test_smooth_l1_and_mask_bce_match_formulas():
    pred = torch.tensor([[0.0, 0.5, 2.0, -1.5]])
    tgt = torch.tensor([[0.2, 0.5, 0.0, 0.0]])
    # |d| = 0.2 -> 0.02, 0 -> 0, 2 -> 1.5, 1.5 -> 1.0
    assert torch.isclose(smooth_l1_box_loss(pred, tgt, 1.0, torch.tensor(2.0)),
                         torch.tensor(2.52 / 2))
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 5, 4, generator=g)
    targets = (torch.rand(3, 5, 4, generator=g) > 0.5).float()
    boxes = torch.tensor([[0.0, 0, 55, 110], [10, 10, 20, 30], [5, 5, 5.2, 60]])
    got = yolact_mask_loss(masks, targets, boxes, 550, torch.tensor(3.0))
    want = 0.0
    for m, t, bx in zip(masks, targets, boxes):
        bce = -(t * torch.log(m) + (1 - t) * torch.log(1 - m)).mean()
        w = max(float(bx[2] - bx[0]) / 550, 1 / 550)  # degenerate side clamped at 1 px
        h = max(float(bx[3] - bx[1]) / 550, 1 / 550)
        want += float(bce) / w / h
    assert abs(float(got) - want / 3) < 1e-4 * want


def test_semantic_loss_uses_the_class_channel_and_skips_empty_images():
    b, k, h, w = 2, 3, 4, 4
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(b, k, h, w, generator=g)
    sem = torch.zeros(b, 2, h, w)
    sem[0, 0, :2] = 1
    sem[0, 1, 1:3] = 1
    classes = torch.tensor([[2, 2], [0, 0]])
    valid = torch.tensor([[True, True], [False, False]])
    t = YOLACTTargets(torch.zeros(b, 2, 4), classes, valid, torch.zeros(b, 2, 1, 1), sem)
    got = semantic_segmentation_loss(logits, t)
    target0 = torch.zeros(k, h, w)
    target0[2] = torch.maximum(sem[0, 0], sem[0, 1])  # class 2 -> channel 2 (union)
    want = F.binary_cross_entropy_with_logits(logits[0], target0, reduction="sum") / (b * h * w)
    assert torch.isclose(got, want)


def test_sample_masks_to_train_caps_per_image():
    image = torch.tensor([0] * 7 + [1] * 2 + [3] * 5)
    keep = sample_masks_to_train(image, 4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(image[keep], minlength=4).tolist() == [3, 2, 0, 3]
    assert sample_masks_to_train(image, 4, -1).all()
    draws = torch.stack([sample_masks_to_train(image, 4, 3) for _ in range(50)])
    assert (draws[:, :7].float().mean(0) > 0.1).all()  # every positive gets drawn sometimes


def _rs_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, p = 30, 3, 5
    logits = torch.randn(r, k, generator=g, requires_grad=True)
    labels = torch.full((r,), k)
    pos = torch.tensor([1, 4, 9, 17, 25])
    labels[pos] = torch.tensor([0, 2, 1, 1, 0])
    labels[[3, 20]] = -1
    gt = torch.tensor([[10.0, 10, 50, 60]]).repeat(p, 1)
    pred = (gt + torch.randn(p, 4, generator=g) * 5).requires_grad_(True)
    masks = torch.rand(p, 6, 6, generator=g, requires_grad=True)
    mtargets = (torch.rand(p, 6, 6, generator=g) > 0.5).float()
    return logits, labels, pos, pred, gt, masks, mtargets


def test_rs_yolact_losses_values_and_gradients():
    logits, labels, pos, pred, gt, masks, mt = _rs_case()
    out, stats = rs_yolact_losses(logits, labels, pred, gt, masks, mt, delta=0.5, num_images=2)
    ious = aligned_iou(pred.detach(), gt)
    lr, ls = rank_sort_loss(logits.detach(), vectorize_labels(labels, 3, ious=ious), delta=0.5)
    assert torch.isclose(out["loss_rank"], lr) and torch.isclose(out["loss_sort"], ls)
    w = torch.sigmoid(logits.detach()[pos]).max(dim=1).values
    dice = [2 * (m * t).sum() / ((m * m).sum() + (t * t).sum() + 1e-5)
            for m, t in zip(masks.detach(), mt)]
    l_mask = 1 - sum(wi * di for wi, di in zip(w, dice)) / w.sum()
    l_box = (w * giou_loss(pred.detach(), gt)).sum() / w.sum()
    assert torch.isclose(stats["loss_mask_unbalanced"], l_mask, atol=1e-6)
    assert torch.isclose(stats["loss_bbox_unbalanced"], l_box, atol=1e-6)
    assert stats["num_pos"] == len(pos) / 2
    assert torch.isclose(stats["mean_pos_iou"], ious.mean())
    # two lambdas: both balanced losses take the value L_rank + L_sort
    assert torch.isclose(out["loss_mask"], lr + ls) and torch.isclose(out["loss_bbox"], lr + ls)
    assert torch.isclose(stats["lambda_mask"], (lr + ls) / l_mask)
    assert torch.isclose(stats["lambda_bbox"], (lr + ls) / l_box)
    # gradient of the mask loss = lambda_mask * d(L_mask)/d(masks)
    masks_ref = masks.detach().clone().requires_grad_(True)
    ref = 1 - sum(wi * 2 * (m * t).sum() / ((m * m).sum() + (t * t).sum() + 1e-5)
                  for wi, m, t in zip(w, masks_ref, mt)) / w.sum()
    (ref * stats["lambda_mask"]).backward()
    out["loss_mask"].backward(retain_graph=True)
    assert torch.allclose(masks.grad, masks_ref.grad, atol=1e-6)
    assert pred.grad is None  # the box loss is a separate output


def test_rs_yolact_losses_without_positives_are_zero_and_attached():
    logits, labels, pos, pred, gt, masks, mt = _rs_case(1)
    labels = torch.where(labels >= 0, torch.full_like(labels, 3), labels)
    out, stats = rs_yolact_losses(logits, labels, pred[:0], gt[:0], masks[:0], mt[:0])
    total = out["loss_rank"] + out["loss_sort"] + out["loss_bbox"] + out["loss_mask"]
    assert float(total.detach()) == 0.0 and stats["num_pos"] == 0
    assert stats["mean_pos_iou"] is None
    total.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
