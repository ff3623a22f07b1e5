"""SOLO / SOLOv2 / RS-SOLOv2 losses against plain per-positive references (SOLO Eq. 1–3)."""
import pytest
import torch
from detectron2.utils.events import EventStorage

from rsloss_d2.losses import rank_sort_loss
from rsloss_d2.modeling.solov2 import (
    build_solo_targets,
    dynamic_mask_logits,
    positive_mask_dice,
    rescale_masks,
    rs_solo_losses,
    solo_focal_dice_losses,
)
from rsloss_d2.modeling.solov2.losses import flatten_cate_logits

from _solo_helpers import GRIDS, RANGES, SIGMA, hand_batch

C, E = 8, 6


def ref_dice(p, m, eps=1e-3):
    return 1 - 2 * (p * m).sum() / ((p * p).sum() + eps + (m * m).sum() + eps)


def outputs(head_type, seed=0, batch=3):
    """Random head outputs for the hand batch (padded 64×64, grids [4, 2])."""
    g = torch.Generator().manual_seed(seed)
    cate = [torch.randn(batch, C, s, s, generator=g).requires_grad_() for s in GRIDS]
    feats = torch.rand(batch, E, 16, 16, generator=g).requires_grad_()
    if head_type == "dynamic":
        ins = [torch.randn(batch, E, s, s, generator=g).requires_grad_() for s in GRIDS]
    elif head_type == "vanilla":  # level strides 8, 16 → mask strides 4, 8
        ins = [torch.randn(batch, s * s, 64 // st, 64 // st, generator=g).requires_grad_()
               for s, st in zip(GRIDS, (4, 8))]
    else:
        ins = [(torch.randn(batch, s, 64 // st, 64 // st, generator=g).requires_grad_(),
                torch.randn(batch, s, 64 // st, 64 // st, generator=g).requires_grad_())
               for s, st in zip(GRIDS, (4, 8))]
    return cate, ins, feats


def reference_pos_dice(head_type, ins, feats, targets):
    """ℓ_k for every positive by a plain loop over positives."""
    out = []
    offsets = [0, GRIDS[0] ** 2]
    for img, cell, level, gt in zip(targets.pos_image.tolist(), targets.pos_cell.tolist(),
                                    targets.pos_level.tolist(), targets.pos_gt.tolist()):
        s = GRIDS[level]
        c = cell - offsets[level]
        i, j = divmod(c, s)
        if head_type == "dynamic":
            w = ins[level][img, :, i, j]
            p = torch.sigmoid((w[:, None, None] * feats[img]).sum(0))
            factor = 4
        elif head_type == "vanilla":
            p = torch.sigmoid(ins[level][img, c])
            factor = (4, 8)[level]
        else:
            x, y = ins[level]
            p = torch.sigmoid(x[img, j]) * torch.sigmoid(y[img, i])
            factor = (4, 8)[level]
        m = rescale_masks(targets.gt_masks[gt:gt + 1], factor)[0]
        out.append(ref_dice(p, m))
    return torch.stack(out)


def test_dynamic_mask_logits_matches_einsum():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 5, 7, 9, generator=g)
    kernels = torch.randn(11, 5, generator=g)
    img = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1, 1, 2, 0])
    ref = torch.einsum("pe,pehw->phw", kernels, feats[img])
    assert torch.allclose(dynamic_mask_logits(kernels, img, feats), ref, atol=1e-5)
    assert dynamic_mask_logits(kernels[:0], img[:0], feats).shape == (0, 7, 9)


@pytest.mark.parametrize("head_type,mode", [("dynamic", "all"), ("dynamic", "first"),
                                            ("vanilla", "last"), ("decoupled", "last")])
def test_positive_dice_matches_loop(head_type, mode):
    targets = build_solo_targets(hand_batch(), (64, 64), GRIDS, RANGES, SIGMA, C, mode)
    cate, ins, feats = outputs(head_type)
    dice = positive_mask_dice(head_type, ins, feats, targets, GRIDS,
                              [4, 4] if head_type == "dynamic" else [4, 8])
    ref = reference_pos_dice(head_type, ins, feats, targets)
    assert dice.losses.shape == (targets.pos_gt.numel(),)
    assert torch.allclose(dice.losses, ref, atol=1e-5)


def ref_focal(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return (a_t * ce * (1 - p_t) ** gamma).sum()


def test_focal_dice_values():
    targets = build_solo_targets(hand_batch(), (64, 64), GRIDS, RANGES, SIGMA, C, "all")
    cate, ins, feats = outputs("dynamic")
    dice = positive_mask_dice("dynamic", ins, feats, targets, GRIDS, [4, 4])
    with EventStorage(0) as storage:
        losses, stats = solo_focal_dice_losses(flatten_cate_logits(cate), targets, dice)
        assert not storage.latest()  # the loss function returns its statistics, never logs
    assert float(stats["num_pos"]) == pytest.approx(8 / 3)  # positive cells per image
    assert stats["num_masks"] == 9
    ref_dice = 1 - reference_pos_dice("dynamic", ins, feats, targets).detach()
    assert float(stats["mean_pos_dice"]) == pytest.approx(float(ref_dice.mean()), rel=1e-5)
    # one-hot targets per (image, cell, class) in the official flattening
    flat = torch.cat([x.permute(0, 2, 3, 1).reshape(3, -1, C) for x in cate], 1).reshape(-1, C)
    onehot = torch.zeros_like(flat)
    lab = targets.labels.reshape(-1)
    onehot[(lab < C).nonzero()[:, 0], lab[lab < C]] = 1
    assert torch.allclose(losses["loss_cate"], ref_focal(flat, onehot) / (8 + 1), rtol=1e-5)
    ref = reference_pos_dice("dynamic", ins, feats, targets)
    assert torch.allclose(losses["loss_ins"], 3.0 * ref.mean(), rtol=1e-5)


def test_rs_losses_align_dice_by_cell():
    """Sorting target of each positive cell = dice of that cell's own mask (the official head
    would misalign them: here grid order A:17, B:16,18,19 differs from cell order 16, 17, ...)."""
    targets = build_solo_targets(hand_batch(), (64, 64), GRIDS, RANGES, SIGMA, C, "first")
    assert targets.pos_cell.tolist() == [2, 3, 6, 7, 16, 17, 18, 19]
    assert targets.pos_gt.tolist() == [0, 0, 0, 0, 1, 0, 1, 1]  # cell 17: first GT (A)
    cate, ins, feats = outputs("dynamic", seed=3)
    dice = positive_mask_dice("dynamic", ins, feats, targets, GRIDS, [4, 4])
    losses, stats = rs_solo_losses(flatten_cate_logits(cate), targets, dice, delta=0.5)
    lam_logged = float(stats["lambda_mask"])

    # reference: flat vector over (image, cell) × class with dice coefficients per cell
    ell = reference_pos_dice("dynamic", ins, feats, targets)
    flat = torch.cat([x.permute(0, 2, 3, 1).reshape(3, -1, C) for x in cate], 1).reshape(-1, C)
    t = torch.zeros_like(flat)
    for k, (cell, gt) in enumerate(zip(targets.pos_cell.tolist(), targets.pos_gt.tolist())):
        t[cell, int(hand_batch()[0].gt_classes[gt])] = 1 - float(ell[k].detach())  # row = cell
    ref_rank, ref_sort = rank_sort_loss(flat.detach(), t)
    assert torch.allclose(losses["loss_rank"], ref_rank, atol=1e-6)
    assert torch.allclose(losses["loss_sort"], ref_sort, atol=1e-6)
    w = torch.sigmoid(flat[targets.pos_cell].detach()).max(dim=1).values
    l_ins = (w * ell).sum() / w.sum()
    lam = (ref_rank + ref_sort) / l_ins
    assert abs(lam_logged - float(lam)) < 1e-4
    assert float(stats["loss_mask_unbalanced"]) == pytest.approx(float(l_ins), rel=1e-5)
    assert torch.allclose(losses["loss_ins"], ref_rank + ref_sort, atol=1e-6)  # value-balanced
    # gradient of loss_ins = λ ∂(Σ w ℓ / Σ w) (only the instance branch)
    g_ins = torch.autograd.grad(losses["loss_ins"], ins[0], retain_graph=True)[0]
    ins_ref = [x.detach().clone().requires_grad_() for x in ins]
    ell2 = reference_pos_dice("dynamic", ins_ref, feats.detach(), targets)
    (lam.detach() * (w * ell2).sum() / w.sum()).backward()
    assert torch.allclose(g_ins, ins_ref[0].grad, atol=1e-6)


@pytest.mark.parametrize("head_type", ["dynamic", "vanilla", "decoupled"])
def test_no_positive_batch_gives_attached_zeros(head_type):
    batch = hand_batch()[1:]  # only the out-of-range / empty-mask GTs and an empty image
    targets = build_solo_targets(batch, (64, 64), GRIDS, RANGES, SIGMA, C, "first")
    assert targets.pos_gt.numel() == 0
    cate, ins, feats = outputs(head_type, batch=2)
    strides = [4, 4] if head_type == "dynamic" else [4, 8]
    dice = positive_mask_dice(head_type, ins, feats, targets, GRIDS, strides)
    for losses, stats in (rs_solo_losses(flatten_cate_logits(cate), targets, dice),
                          solo_focal_dice_losses(flatten_cate_logits(cate), targets, dice)):
        assert float(stats["num_pos"]) == 0 and stats["mean_pos_dice"] is None
        total = sum(losses.values())
        assert torch.isfinite(total)
        params = [p for p in cate] + ([feats] if head_type == "dynamic" else []) + [
            t for x in ins for t in (x if isinstance(x, tuple) else (x,))]
        grads = torch.autograd.grad(total, params, retain_graph=True)
        assert all(torch.isfinite(gr).all() for gr in grads)
        assert float(losses["loss_ins"]) == 0.0
