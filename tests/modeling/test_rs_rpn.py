"""RSRPN: no anchor sampling, IoU sorting targets, balanced GIoU, head_weight, no-GT images."""
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

import rsloss_d2.modeling.box_losses as box_losses
from rsloss_d2.losses import rank_sort_loss
from rsloss_d2.modeling.box_losses import aligned_iou
from rsloss_d2.modeling.proposal_generator import RSRPN

from _rs_helpers import rs_cfg

SIZE = 64
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _rpn(head_weight=0.2):
    cfg = rs_cfg("rs_faster_rcnn_R_18_FPN_quick.yaml",
                 ["MODEL.RS_RPN.HEAD_WEIGHT", str(head_weight)])
    shapes = {k: ShapeSpec(channels=8, stride=s) for k, s in STRIDES.items()}
    torch.manual_seed(0)
    return RSRPN(cfg, shapes)


def _features(n):
    torch.manual_seed(1)
    return [torch.randn(n, 8, SIZE // s, SIZE // s) for s in STRIDES.values()]


def _gt(boxes):
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
    return inst


GTS = [_gt([[4, 4, 36, 36], [30, 34, 62, 60]]), _gt([[10, 8, 26, 40]])]


def _labelled(rpn, gts):
    anchors = rpn.anchor_generator(_features(len(gts)))
    labels, matched = rpn.label_and_sample_anchors(anchors, gts)
    return anchors, labels, matched


def test_every_anchor_is_labelled_without_sampling():
    rpn = _rpn()
    anchors, labels, _ = _labelled(rpn, GTS)
    all_anchors = Boxes.cat(anchors)
    for gt, lab in zip(GTS, labels):
        iou = pairwise_iou(gt.gt_boxes, all_anchors)
        best = iou.max(dim=0).values
        best_per_gt = iou.max(dim=1).values
        lq = ((iou == best_per_gt[:, None]) & (best_per_gt[:, None] >= 0.3)).any(0)
        assert torch.equal(lab == 1, (best >= 0.7) | lq)
        assert torch.equal(lab == 0, (best < 0.3) & ~lq)
        assert torch.equal(lab == -1, (best >= 0.3) & (best < 0.7) & ~lq)
        # Detectron2's RPN would keep at most 128 of them (BATCH_SIZE_PER_IMAGE): all are used
        assert (lab == 0).sum() > rpn.batch_size_per_image


def _loss_inputs(rpn, gts, seed=0):
    anchors, labels, matched = _labelled(rpn, gts)
    torch.manual_seed(seed)
    n = len(gts)
    logits = [torch.randn(n, len(a), requires_grad=True) for a in anchors]
    deltas = [(0.3 * torch.randn(n, len(a), 4)).requires_grad_(True) for a in anchors]
    return anchors, logits, labels, deltas, matched


def test_rs_targets_are_iou_of_decoded_predictions(monkeypatch):
    seen = {}

    def spy(logits, targets, delta=0.5):
        seen["targets"] = targets.clone()
        return rank_sort_loss(logits, targets, delta)

    monkeypatch.setattr(box_losses, "rank_sort_loss", spy)
    rpn = _rpn()
    anchors, logits, labels, deltas, matched = _loss_inputs(rpn, GTS)
    with EventStorage(0):
        rpn.losses(anchors, logits, labels, deltas, matched)
    lab = torch.stack(labels).reshape(-1)
    pos = lab == 1
    all_anchors = Boxes.cat(anchors).tensor.repeat(len(GTS), 1)
    flat_deltas = torch.cat(deltas, dim=1).reshape(-1, 4).detach()
    decoded = rpn.box2box_transform.apply_deltas(flat_deltas[pos], all_anchors[pos])
    expected = torch.where(lab == 0, 0.0, -1.0)
    expected[pos] = aligned_iou(decoded, torch.stack(matched).reshape(-1, 4)[pos])
    assert torch.allclose(seen["targets"], expected)
    assert pos.sum() >= 3


def test_losses_balanced_and_scaled_by_head_weight():
    grads = {}
    values = {}
    for hw in (0.2, 1.0):
        rpn = _rpn(hw)
        anchors, logits, labels, deltas, matched = _loss_inputs(rpn, GTS)
        with EventStorage(0) as storage:
            losses = rpn.losses(anchors, logits, labels, deltas, matched)
            lam = storage.latest()["rpn/lambda_bbox"][0]
        assert set(losses) == {"loss_rpn_rank", "loss_rpn_sort", "loss_rpn_bbox"}
        # value of the balanced box loss = L_rank + L_sort (both × head_weight)
        cls = losses["loss_rpn_rank"] + losses["loss_rpn_sort"]
        assert torch.allclose(losses["loss_rpn_bbox"], cls)
        sum(losses.values()).backward()
        grads[hw] = (torch.cat([x.grad for x in logits], 1), torch.cat([x.grad for x in deltas], 1))
        values[hw] = {k: v.item() for k, v in losses.items()}
        assert lam > 0
    for k in values[1.0]:
        assert abs(values[0.2][k] - 0.2 * values[1.0][k]) < 1e-6
    for g02, g1 in zip(grads[0.2], grads[1.0]):
        assert torch.allclose(g02, 0.2 * g1, atol=1e-8)
        assert g1.abs().sum() > 0


def test_images_without_gt():
    rpn = _rpn()
    gts = [_gt([]), _gt([])]
    anchors, logits, labels, deltas, matched = _loss_inputs(rpn, gts)
    assert all((lab == 0).all() for lab in labels)
    with EventStorage(0):
        losses = rpn.losses(anchors, logits, labels, deltas, matched)
    total = sum(losses.values())
    assert total.item() == 0
    total.backward()
    assert all(torch.isfinite(x.grad).all() and (x.grad == 0).all() for x in logits + deltas)
    # one image with GT, one without: finite, the GT image drives the loss
    anchors, logits, labels, deltas, matched = _loss_inputs(rpn, [GTS[0], _gt([])])
    with EventStorage(0):
        losses = rpn.losses(anchors, logits, labels, deltas, matched)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_rpn_rank"] > 0


def _rpn_with(opts):
    cfg = rs_cfg("rs_faster_rcnn_R_18_FPN_quick.yaml", opts)
    shapes = {k: ShapeSpec(channels=8, stride=s) for k, s in STRIDES.items()}
    return RSRPN(cfg, shapes)


def _mmdet_labels(iou, usable, pos=0.7, neg=0.3, min_pos=0.3):
    """mmdet MaxIoUAssigner on the usable anchors only (the others removed before matching,
    then ignored), written as its loops: (R,) labels 1 / 0 / -1."""
    num_gt, num_anchors = iou.shape
    labels = torch.full((num_anchors,), -1, dtype=torch.int64)
    cols = [j for j in range(num_anchors) if usable[j]]
    for j in cols:
        best = max(iou[g, j].item() for g in range(num_gt))
        labels[j] = 1 if best >= pos else (0 if best < neg else -1)
    for g in range(num_gt):
        gt_best = max(iou[g, j].item() for j in cols)
        if gt_best >= min_pos:
            for j in cols:
                if iou[g, j].item() == gt_best:
                    labels[j] = 1
    return labels


def test_border_gt_keeps_its_best_inside_anchor():
    """BOUNDARY_THRESH 0 (official cascade): outside anchors are removed before matching, so a
    GT whose best anchor crosses the border gets its best inside anchor (mmdet); matching all
    anchors first (Detectron2's RPN) leaves this GT with no positive at all."""
    from detectron2.modeling.proposal_generator.rpn import RPN

    rpn = _rpn_with(["MODEL.RPN.BOUNDARY_THRESH", "0"])
    gts = [_gt([[1, 1, 9, 40]])]
    anchors = rpn.anchor_generator(_features(1))
    labels, matched = rpn.label_and_sample_anchors(anchors, gts)
    old, _ = RPN.label_and_sample_anchors(rpn, anchors, gts)
    assert (old[0] == 1).sum() == 0  # the case the fix is about
    all_anchors = Boxes.cat(anchors)
    inside = all_anchors.inside_box((SIZE, SIZE), 0)
    want = _mmdet_labels(pairwise_iou(gts[0].gt_boxes, all_anchors), inside)
    assert torch.equal(labels[0].long(), want)
    assert (labels[0] == 1).sum() > 0 and inside[labels[0] == 1].all()
    assert (labels[0][~inside] == -1).all()


def test_anchors_in_batch_padding_are_ignored():
    """An image of 20 x 20 in a 64 x 64 batch: padded alone it is 32 x 32, so every anchor whose
    cell lies beyond 32 px is invalid (ignored, -1), not a negative; the other image is full."""
    rpn = _rpn_with([])
    small = Instances((20, 20))
    small.gt_boxes = Boxes(torch.tensor([[2.0, 3.0, 18.0, 17.0]]))
    small.gt_classes = torch.zeros(1, dtype=torch.int64)
    gts = [small, _gt([[4, 4, 36, 36]])]
    anchors = rpn.anchor_generator(_features(2))
    labels, _ = rpn.label_and_sample_anchors(anchors, gts)
    centres = Boxes.cat(anchors).get_centers()
    strides = torch.cat([torch.full((len(a),), float(s)) for a, s in zip(anchors, STRIDES.values())])
    cell_end = torch.ceil(32 / strides) * strides  # first cell beyond the padded-alone image
    in_padding = (centres >= cell_end[:, None]).any(dim=1)
    assert in_padding.any() and (~in_padding).any()
    assert (labels[0][in_padding] == -1).all()
    assert ((labels[0][~in_padding] == 0).sum() > 0) and (labels[0] == 1).any()
    want = _mmdet_labels(pairwise_iou(small.gt_boxes, Boxes.cat(anchors)), ~in_padding)
    assert torch.equal(labels[0].long(), want)
    # the full-size image (64 = a multiple of 32) has no invalid anchor
    full = torch.ones(len(centres), dtype=torch.bool)
    assert torch.equal(labels[1].long(), _mmdet_labels(
        pairwise_iou(gts[1].gt_boxes, Boxes.cat(anchors)), full))
