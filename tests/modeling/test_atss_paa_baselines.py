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


# ---------------------------------------------------------------- the model
import json  # noqa: E402
import os  # noqa: E402

from detectron2.utils.events import EventStorage  # noqa: E402

from conftest import read_metrics, run_train_net  # noqa: E402
from _dense_helpers import REPO, build, dense_cfg, fixed_batch, make_image, train_steps  # noqa

ATSS = "atss_R_18_FPN_quick.yaml"
PAA = "paa_R_18_FPN_quick.yaml"
BASELINES = {ATSS: ("focal_centerness", "loss_centerness"), PAA: ("focal_iou_pred", "loss_iou")}


def _features(model, size=64):
    """Two images (GroupNorm needs more than one value per group on the 1×1 P7)."""
    images = model.preprocess_image([make_image(size, [(0, 6, 8, 30, 36)]),
                                     make_image(size, [])])
    feats = model.backbone(images.tensor)
    return images, [feats[f] for f in model.head_in_features]


@pytest.mark.parametrize("config", sorted(BASELINES))
def test_head_outputs_one_quality_map_per_anchor_on_every_level(config):
    model = build(dense_cfg(config)).eval()
    assert model.loss == BASELINES[config][0]
    assert model.anchor_generator.num_cell_anchors == [1] * 5
    assert model.head.quality_pred.bias.abs().sum() == 0
    assert model.head.quality_pred.weight.std().item() == pytest.approx(0.01, rel=0.1)
    _, features = _features(model)
    with torch.no_grad():
        logits, deltas, quality = model.head(features)
    for f, lg, d, q in zip(features, logits, deltas, quality):
        n, _, h, w = f.shape
        assert lg.shape == (n, 3, h, w) and d.shape == (n, 4, h, w) and q.shape == (n, 1, h, w)
    # fed by the regression tower: changing the class tower leaves it unchanged
    with torch.no_grad():
        for p in model.head.cls_subnet.parameters():
            p.add_(1.0)
        _, _, quality2 = model.head(features)
    assert all(torch.equal(a, b) for a, b in zip(quality, quality2))


def test_rs_heads_have_no_quality_branch():
    model = build(dense_cfg("RS-ATSS")).eval()
    _, features = _features(model)
    assert model.head.quality_pred is None and len(model.head(features)) == 2


@pytest.mark.parametrize("config", sorted(BASELINES))
def test_test_score_combines_class_and_quality_before_the_threshold(config):
    """One anchor with class logit a and quality logit b, every other class logit −20: the only
    detection has score s·q (ATSS) / sqrt(s·q) (PAA); with s = 0.5 and q ≈ 0.047 the product
    0.024 falls under the 0.05 threshold (ATSS: no detection) while its sqrt 0.154 does not."""
    model = build(dense_cfg(config))
    model.eval()
    images, features = _features(model)
    with torch.no_grad():
        logits, deltas, quality = model.head(features)
    for a, b, expected_atss, expected_paa in ((2.0, -1.0, None, None), (0.0, -3.0, [], None)):
        for lg in logits:
            lg.fill_(-20.0)
        logits[1][0, 2, 3, 2] = a
        quality[1][0, 0, 3, 2] = b
        with torch.no_grad():
            inst = model.forward_inference(images, features, [logits, deltas, quality])[0]
        s, q = torch.sigmoid(torch.tensor(a)), torch.sigmoid(torch.tensor(b))
        score = float(s * q) if config == ATSS else float((s * q).sqrt())
        if score <= 0.05:
            assert len(inst) == 0
        else:
            assert len(inst) == 1 and inst.pred_classes.tolist() == [2]
            assert inst.scores.item() == pytest.approx(score, rel=1e-5)
    assert config == PAA or score < 0.05  # the second case: filtered for ATSS only


@pytest.mark.parametrize("config", sorted(BASELINES))
def test_trains_on_fixed_batch_and_handles_an_image_without_gt(config):
    model = build(dense_cfg(config))
    history = train_steps(model, fixed_batch(), steps=8, lr=0.01)
    assert set(history[0]) == {"loss_cls", "loss_bbox", BASELINES[config][1]}
    assert history[-1]["loss_cls"] < 0.5 * history[0]["loss_cls"], history
    model.train()
    empty = fixed_batch(empty_second=True)[1]
    with EventStorage(0):
        losses = model([empty, empty])
    assert losses["loss_bbox"].item() == 0 and losses[BASELINES[config][1]].item() == 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _model_losses_and_assignment(config):
    """One training forward of ``config`` on :func:`fixed_batch` and the model's own assignment.

    Returns ``(losses, a)``: the model's loss dict and a namespace with ``logits`` (N, A, 3),
    ``deltas`` (N, A, 4), ``quality`` (N, A, 1), ``anchors`` (A, 4), ``img``/``anc`` (P,) the
    indices of the positives, ``labels`` (N, A) (3 background, −1 ignored) and ``gt_box`` (P, 4).
    """
    from types import SimpleNamespace

    from detectron2.layers import cat

    from rsloss_d2.modeling.matchers import valid_anchor_mask
    from rsloss_d2.modeling.ranking_retinanet.meta_arch import _gt_tables

    model = build(dense_cfg(config))
    model.train()
    batch = fixed_batch()
    images = model.preprocess_image(batch)
    gt = [x["instances"] for x in batch]
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    with EventStorage(0):
        preds = model.head(features)
        losses = model.forward_training(images, features, preds, gt)
        lg, dl, ql = model._transpose_dense_predictions(preds, [3, 4, 1])
        logits, deltas, quality = cat(lg, 1), cat(dl, 1), cat(ql, 1)
        anchors = model.anchor_generator(features)
        valid = valid_anchor_mask([a.tensor for a in anchors], model.anchor_generator.strides,
                                  images.image_sizes, model.backbone.size_divisibility,
                                  model.anchor_generator.offset)
        assigned, _ = model.assign(anchors, valid, gt, logits, deltas)
    boxes, classes = _gt_tables(gt)
    img, anc = (assigned >= 0).nonzero(as_tuple=True)
    labels = torch.full(assigned.shape, 3)
    labels[img, anc] = classes[img, assigned[img, anc]]
    labels[assigned == -2] = -1
    return losses, SimpleNamespace(
        model=model, logits=logits, deltas=deltas, quality=quality,
        anchors=torch.cat([a.tensor for a in anchors]), img=img, anc=anc, labels=labels,
        gt_box=boxes[img, assigned[img, anc]], num_images=len(batch))


def test_atss_model_losses_use_the_decoded_targets_and_per_image_normaliser():
    """The model's ATSS losses equal the loss function fed by hand from the assignment."""
    losses, a = _model_losses_and_assignment(ATSS)
    img, anc, anchors = a.img, a.anc, a.anchors
    t = a.model.box2box_transform
    pred = t.apply_deltas(a.deltas[img, anc], anchors[anc])
    target = t.apply_deltas(t.get_deltas(anchors[anc], a.gt_box), anchors[anc])
    per_image = torch.tensor([(img == i).sum() for i in range(a.num_images)])
    ref = focal_centerness_losses(a.logits.reshape(-1, 3), a.labels.reshape(-1), pred, target,
                                  anchors[anc], a.quality[img, anc, 0], per_image)
    assert img.numel() > 0
    for k, v in ref.losses.items():
        assert losses[k].item() == pytest.approx(v.item(), rel=1e-5), k


def test_paa_score_voting_weights_by_the_sqrt_scores():
    """Two boxes of class 2 (anchors at P3 cells (3, 3) and (4, 3), the second moved 4 px back:
    IoU 7/9 > 0.6), NMS keeps the first; its voted box is Σ p_i b_i / Σ p_i with
    p_i = exp(−(1 − IoU_i)² / 0.025) · sqrt(s_i·v_i) (PAA paper §3.4, mmdet paa_head.py)."""
    model = build(dense_cfg(PAA))
    model.eval()
    images, features = _features(model)
    with torch.no_grad():
        logits, deltas, quality = model.head(features)
    for lg, d, q in zip(logits, deltas, quality):
        lg.fill_(-20.0)
        d.zero_()
        q.zero_()
    logits[0][0, 2, 3, 3], quality[0][0, 0, 3, 3] = 2.0, 1.0
    logits[0][0, 2, 3, 4], quality[0][0, 0, 3, 4] = 1.0, 0.0
    deltas[0][0, 0, 3, 4] = -1.25  # dx = −4 px / 32 px, coder weight 10
    with torch.no_grad():
        inst = model.forward_inference(images, features, [logits, deltas, quality])[0]
    sig = torch.sigmoid
    scores = [float((sig(torch.tensor(2.0)) * sig(torch.tensor(1.0))).sqrt()),
              float((sig(torch.tensor(1.0)) * sig(torch.tensor(0.0))).sqrt())]
    b1, b2 = torch.tensor([8.0, 8.0, 40.0, 40.0]), torch.tensor([12.0, 8.0, 44.0, 40.0])
    iou = 28 * 32 / (2 * 32 * 32 - 28 * 32)
    p1, p2 = scores[0], math.exp(-(1 - iou) ** 2 / 0.025) * scores[1]
    voted = (p1 * b1 + p2 * b2) / (p1 + p2)
    assert len(inst) == 1 and inst.scores.item() == pytest.approx(scores[0], rel=1e-5)
    assert torch.allclose(inst.pred_boxes.tensor[0], voted, atol=1e-4), (inst.pred_boxes, voted)


def test_paa_model_losses_equal_the_loss_function_on_its_assignment():
    losses, a = _model_losses_and_assignment(PAA)
    img, anc = a.img, a.anc
    pred = a.model.box2box_transform.apply_deltas(a.deltas[img, anc], a.anchors[anc])
    ref = focal_iou_pred_losses(a.logits.reshape(-1, 3), a.labels.reshape(-1), pred, a.gt_box,
                                a.quality[img, anc, 0], 2)
    assert img.numel() > 0
    for k, v in ref.losses.items():
        assert losses[k].item() == pytest.approx(v.item(), rel=1e-5), k


@pytest.mark.parametrize("path", [
    os.path.join(REPO, "configs", "shapes", ATSS),
    os.path.join(REPO, "configs", "ranksort_loss", "atss_R_50_FPN_1x.yaml"),
    os.path.join(REPO, "configs", "shapes", PAA),
    os.path.join(REPO, "configs", "ranksort_loss", "paa_R_50_FPN_1x.yaml"),
], ids=os.path.basename)
def test_configs_build_the_standard_heads(path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from rsloss_d2 import add_rsloss_config

    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    paper = "ranksort_loss" in path
    assert model.anchor_generator.num_cell_anchors == [1] * 5
    p3 = 64 if paper else 32  # octave base scale 8 x stride 8 (halved on shapes)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[p3 * 2 ** i] for i in range(5)]
    assert model.head.quality_pred is not None and model.head.scales is not None
    assert model.assigner == ("paa" if "paa" in os.path.basename(path) else "atss")
    assert model.test_nms_thresh == 0.6 and model.test_score_thresh == 0.05
    assert (model.focal_loss_alpha, model.focal_loss_gamma) == (0.25, 2.0)
    if model.assigner == "paa":  # standard PAA: cost GIoU weight 1.3, sklearn's reg_covar
        assert model.loss == "focal_iou_pred" and model.score_voting
        assert (model.paa_cost_giou_weight, model.paa_reg_covar) == (1.3, 1e-6)
        assert (model.paa_iou_thresh, model.paa_topk, model.score_voting_sigma) == (0.1, 9, 0.025)
    else:
        assert model.loss == "focal_centerness" and not model.score_voting
    if paper:
        assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.REFERENCE_WORLD_SIZE * cfg.SOLVER.REFERENCE_IMS_PER_PROCESS == 16


# 128 px, 20 iterations of 4 images at lr 0.02: finite losses, logged parts, and detections
SMOKE = ["SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "(15,)",
         "SOLVER.BASE_LR", "0.02",
         "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
         "DATALOADER.NUM_WORKERS", "0", "SEED", "3", "TEST.OLRP.ENABLED", "False"]


@pytest.mark.parametrize("config", [ATSS, PAA])
def test_short_training_on_shapes_gives_finite_losses_and_detections(config, shapes_root,
                                                                      tmp_path):
    out = str(tmp_path)
    run_train_net(["--config-file", os.path.join(REPO, "configs", "shapes", config),
                   "OUTPUT_DIR", out] + SMOKE, shapes_root)
    train = [m for m in read_metrics(out) if "total_loss" in m]
    logged = ("loss_cls", "loss_bbox", BASELINES[config][1], "dense/num_pos",
              "dense/mean_pos_iou")
    assert train and all(math.isfinite(m[k]) for m in train for k in logged + ("total_loss",))
    assert all(m["dense/num_pos"] > 0 for m in train)
    with open(os.path.join(out, "inference", "shapes_val", "coco_instances_results.json")) as f:
        dets = json.load(f)
    assert dets and all(0.05 < d["score"] <= 1 for d in dets)
