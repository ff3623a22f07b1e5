"""RS ROI heads: hand-made target case, no proposal sampling, λ on box / mask gradients, score
weights aligned with the RoIs the mask head sees, batches without positives."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

import rsloss_d2.modeling.box_losses as box_losses
from rsloss_d2.losses import rank_sort_loss
from rsloss_d2.modeling.box_losses import aligned_iou, giou_loss
from rsloss_d2.modeling.roi_heads import RSFastRCNNOutputLayers, RSMaskRCNNConvUpsampleHead

from _rs_helpers import build, fixed_batch, rs_cfg

C = 3


def _predictor():
    torch.manual_seed(0)
    return RSFastRCNNOutputLayers(
        ShapeSpec(channels=16), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=C,
    )


def _hand_case():
    """Two images: image 0 has RoIs of class 1, background, class 0; image 1 one ignored RoI."""
    props0 = Instances((64, 64))
    props0.proposal_boxes = Boxes(
        torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60], [30, 0, 50, 16]]))
    props0.gt_classes = torch.tensor([1, C, 0])
    props0.gt_boxes = Boxes(torch.tensor([[2.0, 2, 22, 22], [0, 0, 1, 1], [28, 0, 50, 20]]))
    props1 = Instances((64, 64))
    props1.proposal_boxes = Boxes(torch.tensor([[5.0, 5, 25, 30]]))
    props1.gt_classes = torch.tensor([-1])
    props1.gt_boxes = Boxes(torch.tensor([[5.0, 5, 25, 30]]))
    torch.manual_seed(3)
    scores = torch.randn(4, C, requires_grad=True)
    deltas = (0.5 * torch.randn(4, C * 4)).requires_grad_(True)  # different box per class
    return [props0, props1], scores, deltas


def test_rs_targets_hand_made_case(monkeypatch):
    seen = {}

    def spy(logits, targets, delta=0.5):
        seen["logits"], seen["targets"] = logits, targets.clone()
        return rank_sort_loss(logits, targets, delta)

    monkeypatch.setattr(box_losses, "rank_sort_loss", spy)
    pred = _predictor()
    proposals, scores, deltas = _hand_case()
    with EventStorage(0):
        losses, out = pred.rs_losses((scores, deltas), proposals)
    assert set(losses) == {"loss_roi_rank", "loss_roi_sort", "loss_roi_bbox"}
    b2b = pred.box2box_transform
    props = torch.cat([p.proposal_boxes.tensor for p in proposals])
    gts = torch.cat([p.gt_boxes.tensor for p in proposals])
    d = deltas.detach().view(4, C, 4)
    iou_0 = aligned_iou(b2b.apply_deltas(d[0, 1][None], props[:1]), gts[:1])[0]  # GT-class row
    iou_2 = aligned_iou(b2b.apply_deltas(d[2, 0][None], props[2:3]), gts[2:3])[0]
    wrong = aligned_iou(b2b.apply_deltas(d[0, 0][None], props[:1]), gts[:1])[0]
    assert abs(iou_0 - wrong) > 1e-3  # the other classes' boxes would give other targets
    expected = torch.tensor([[0.0, iou_0, 0.0],
                             [0.0, 0.0, 0.0],
                             [iou_2, 0.0, 0.0],
                             [-1.0, -1.0, -1.0]])
    assert torch.allclose(seen["targets"].reshape(4, C), expected, atol=1e-6)
    assert seen["logits"] is scores  # all RoIs × all C classes, not a sample
    assert torch.allclose(out.score_weights, scores.detach()[[0, 2]].sigmoid().amax(1))


def test_box_loss_value_and_gradient_scale():
    pred = _predictor()
    proposals, scores, deltas = _hand_case()
    with EventStorage(0) as storage:
        losses, out = pred.rs_losses((scores, deltas), proposals)
        logged = {k: v[0] for k, v in storage.latest().items()}
    cls = losses["loss_roi_rank"] + losses["loss_roi_sort"]
    assert torch.allclose(losses["loss_roi_bbox"], cls)
    losses["loss_roi_bbox"].backward()
    # plain score-weighted GIoU written from the paper, on a copy of the deltas
    d_ref = deltas.detach().clone().requires_grad_(True)
    props = torch.cat([p.proposal_boxes.tensor for p in proposals])[[0, 2]]
    gts = torch.cat([p.gt_boxes.tensor for p in proposals])[[0, 2]]
    boxes = pred.box2box_transform.apply_deltas(
        torch.stack([d_ref.view(4, C, 4)[0, 1], d_ref.view(4, C, 4)[2, 0]]), props)
    w = scores.detach()[[0, 2]].sigmoid().amax(1)
    plain = (w * giou_loss(boxes, gts)).sum() / w.sum()
    plain.backward()
    lam = (losses["loss_roi_rank"] + losses["loss_roi_sort"]).detach() / plain.detach()
    assert torch.allclose(deltas.grad, lam * d_ref.grad, atol=1e-7)
    assert scores.grad is None  # the box loss does not reach the classifier
    assert abs(lam.item() - 1) > 0.05
    # what goes to EventStorage (read back in one host copy)
    assert logged["fast_rcnn/lambda_bbox"] == pytest.approx(lam.item(), rel=1e-5)
    assert logged["fast_rcnn/loss_bbox_unbalanced"] == pytest.approx(plain.item(), rel=1e-5)
    assert logged["fast_rcnn/num_pos"] == pytest.approx(2 / len(proposals))
    assert logged["fast_rcnn/mean_pos_iou"] == pytest.approx(out.ious.mean().item())


def test_logged_appended_gt_and_proposal_iou():
    """num_gt_pos_rois counts positives whose proposal is their GT box (appended GT);
    mean_pos_proposal_iou is the IoU before regression, mean_pos_iou after it."""
    pred = _predictor()
    proposals, scores, deltas = _hand_case()
    gt_row = proposals[0].gt_boxes.tensor[2].clone()
    proposals[0].proposal_boxes.tensor[2] = gt_row  # the class-0 positive is an appended GT
    with EventStorage(0) as storage:
        _, out = pred.rs_losses((scores, deltas), proposals)
        logged = {k: v[0] for k, v in storage.latest().items()}
    assert logged["fast_rcnn/num_gt_pos_rois"] == pytest.approx(1 / len(proposals))
    before = aligned_iou(proposals[0].proposal_boxes.tensor[[0, 2]],
                         proposals[0].gt_boxes.tensor[[0, 2]])
    assert before[1] == pytest.approx(1.0)
    assert logged["fast_rcnn/mean_pos_proposal_iou"] == pytest.approx(before.mean().item())
    assert logged["fast_rcnn/mean_pos_iou"] == pytest.approx(out.ious.mean().item())
    assert abs(logged["fast_rcnn/mean_pos_iou"] - logged["fast_rcnn/mean_pos_proposal_iou"]) > 1e-3


def test_safeguard_leaves_appended_gt_out_of_box_loss_and_lambda():
    """BOX_LOSS_ON_GT_PROPOSALS False: the appended-GT positive is ranked as before but is not in
    L_box / λ; True (official, default) keeps it."""
    proposals, scores, deltas = _hand_case()
    proposals[0].proposal_boxes.tensor[2] = proposals[0].gt_boxes.tensor[2].clone()
    official = _predictor()
    assert official.box_loss_on_gt_proposals
    guarded = _predictor()
    guarded.box_loss_on_gt_proposals = False
    with EventStorage(0):
        _, out_off = official.rs_losses((scores, deltas), proposals)
        _, out_guard = guarded.rs_losses((scores, deltas), proposals)
    # ranking unchanged: same positives, sorting targets, score weights and L_rank / L_sort
    assert torch.equal(out_off.ious, out_guard.ious)
    assert torch.equal(out_off.score_weights, out_guard.score_weights)
    assert torch.allclose(out_off.loss_rank, out_guard.loss_rank)
    # box loss: the score-weighted mean over both positives vs over the first (non-GT) one only
    props = torch.cat([p.proposal_boxes.tensor for p in proposals])[[0, 2]]
    gts = torch.cat([p.gt_boxes.tensor for p in proposals])[[0, 2]]
    d = deltas.detach().view(4, C, 4)
    boxes = official.box2box_transform.apply_deltas(torch.stack([d[0, 1], d[2, 0]]), props)
    per_pos = giou_loss(boxes, gts)
    w = out_off.score_weights
    assert out_off.loss_box_unbalanced == pytest.approx(((w * per_pos).sum() / w.sum()).item(),
                                                        rel=1e-5)
    assert out_guard.loss_box_unbalanced == pytest.approx(per_pos[0].item(), rel=1e-5)
    cls = (out_guard.loss_rank + out_guard.loss_sort).item()
    assert out_guard.box_lambda == pytest.approx(cls / per_pos[0].item(), rel=1e-5)
    # only the non-GT positive's deltas get a box gradient
    deltas.grad = None
    out_guard.loss_box.backward()
    assert deltas.grad.view(4, C, 4)[0, 1].abs().sum() > 0
    assert deltas.grad.view(4, C, 4)[2].abs().sum() == 0


def test_safeguard_with_only_appended_gt_positives_gives_no_box_gradient():
    proposals, scores, deltas = _hand_case()
    for i in (0, 2):
        proposals[0].proposal_boxes.tensor[i] = proposals[0].gt_boxes.tensor[i].clone()
    guarded = _predictor()
    guarded.box_loss_on_gt_proposals = False
    with EventStorage(0):
        _, out = guarded.rs_losses((scores, deltas), proposals)
    assert out.loss_box.item() == 0 and out.box_lambda.item() == 0
    out.loss_box.backward()
    assert deltas.grad.abs().sum() == 0
    assert torch.isfinite(out.loss_rank)


def test_mask_loss_value_and_gradient_scale():
    torch.manual_seed(0)
    head = RSMaskRCNNConvUpsampleHead(ShapeSpec(channels=8, height=7, width=7), num_classes=C,
                                      conv_dims=[8, 8])
    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 32, 32], [16, 16, 60, 50]]))
    inst.gt_classes = torch.tensor([2, 0])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 4:28, 6:30] = True
    masks[1, 20:50, 16:40] = True
    inst.gt_masks = BitMasks(masks)
    inst.rs_score_weight = torch.tensor([0.9, 0.3])
    logits = torch.randn(2, C, 14, 14, requires_grad=True)
    ref = torch.tensor(0.8)
    with EventStorage(0) as storage:
        loss = head.rs_mask_loss(logits, [inst], ref)
        logged = {k: v[0] for k, v in storage.latest().items()}
    assert loss.item() == pytest.approx(0.8)  # λ_mask · L_mask = L_roi_rank + L_roi_sort
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    targets = inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, 14)
    p, m = ref_logits[[0, 1], [2, 0]].sigmoid().flatten(1), targets.float().flatten(1)
    per = 1 - 2 * (p * m).sum(1) / ((p * p).sum(1) + (m * m).sum(1) + 1e-5)
    plain = (inst.rs_score_weight * per).sum() / inst.rs_score_weight.sum()
    plain.backward()
    assert torch.allclose(logits.grad, (0.8 / plain.detach()) * ref_logits.grad, atol=1e-7)
    assert logits.grad[:, 1].abs().sum() == 0  # only the GT-class mask is trained
    assert logged["mask_rcnn/num_masks"] == 2
    assert logged["mask_rcnn/loss_mask_unbalanced"] == pytest.approx(plain.item(), rel=1e-5)
    assert logged["mask_rcnn/lambda_mask"] == pytest.approx(0.8 / plain.item(), rel=1e-5)


def _roi_inputs(model, batch):
    images = ImageList.from_tensors([(x["image"].float() - 100) / 50 for x in batch], 32)
    features = model.backbone(images.tensor)
    targets = [x["instances"] for x in batch]
    return images, features, targets


def test_all_proposals_used_and_weights_follow_rois_to_mask_head(monkeypatch):
    cfg = rs_cfg("rs_mask_rcnn_R_18_FPN_quick.yaml", ["MODEL.RS_ROI_HEADS.MASK_MAX_POSITIVES", "4"])
    model = build(cfg)
    model.train()
    batch = fixed_batch()
    images, features, targets = _roi_inputs(model, batch)
    with EventStorage(0):
        proposals, _ = model.proposal_generator(images, features, targets)
        captured = {}
        model.roi_heads.box_predictor.register_forward_hook(
            lambda m, i, o: captured.__setitem__("scores", o[0].detach()))
        real = model.roi_heads.mask_head.rs_mask_loss

        def spy(x, instances, ref):
            captured["mask_instances"], captured["ref"] = instances, ref
            return real(x, instances, ref)

        monkeypatch.setattr(model.roi_heads.mask_head, "rs_mask_loss", spy)
        num_props = [len(p) for p in proposals]
        labelled, losses = model.roi_heads(images, features, proposals, targets)
    # every proposal plus the GT boxes, no sampling
    assert [len(p) for p in labelled] == [n + len(t) for n, t in zip(num_props, targets)]
    gt_classes = torch.cat([p.gt_classes for p in labelled])
    fg = (gt_classes >= 0) & (gt_classes < C)
    weights = torch.cat([p.rs_score_weight for p in labelled])
    assert torch.allclose(weights[fg], captured["scores"][fg].sigmoid().amax(1))
    assert (weights[~fg] == 0).all()
    # the mask head got a random subset of 4 positives, each with its own RoI's weight
    mask_inst = captured["mask_instances"]
    assert sum(len(x) for x in mask_inst) == 4 < int(fg.sum())
    all_boxes = torch.cat([p.proposal_boxes.tensor for p in labelled])
    for img, inst in enumerate(mask_inst):
        offset = sum(len(p) for p in labelled[:img])
        boxes_img = all_boxes[offset: offset + len(labelled[img])]
        for box, w in zip(inst.proposal_boxes.tensor, inst.rs_score_weight):
            rows = (boxes_img == box).all(1).nonzero().squeeze(1) + offset
            assert torch.isclose(weights[rows], w).any()
    cls = (losses["loss_roi_rank"] + losses["loss_roi_sort"]).detach()
    assert torch.allclose(captured["ref"], cls)
    assert torch.allclose(losses["loss_mask"], captured["ref"])


@pytest.mark.parametrize("config", ["rs_mask_rcnn_R_18_FPN_quick.yaml",
                                    "rs_cascade_rcnn_R_18_FPN_quick.yaml"])
def test_batch_without_positive_rois(config):
    """Proposals far from every GT and no GT appended: no positive RoI anywhere, no NaN."""
    cfg = rs_cfg(config, ["MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False", "MODEL.MASK_ON", "True",
                          "MODEL.ROI_MASK_HEAD.NAME", "RSMaskRCNNConvUpsampleHead"])
    model = build(cfg)
    model.train()
    batch = fixed_batch()
    images, features, targets = _roi_inputs(model, batch)
    proposals = []
    for t in targets:
        p = Instances(t.image_size)
        p.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 3, 3], [60, 60, 63, 63], [0, 60, 4, 63]]))
        p.objectness_logits = torch.zeros(3)
        proposals.append(p)
    with EventStorage(0):
        _, losses = model.roi_heads(images, features, proposals, targets)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() == 0
    assert "loss_mask" in losses
    total.backward()
    for p in model.roi_heads.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_box_loss_on_gt_proposals_key_reaches_the_predictor():
    assert build(rs_cfg("rs_faster_rcnn_R_18_FPN_quick.yaml")).roi_heads.box_predictor \
        .box_loss_on_gt_proposals is True  # official default
    model = build(rs_cfg("rs_faster_rcnn_R_18_FPN_quick.yaml",
                         ["MODEL.RS_ROI_HEADS.BOX_LOSS_ON_GT_PROPOSALS", "False"]))
    assert model.roi_heads.box_predictor.box_loss_on_gt_proposals is False
