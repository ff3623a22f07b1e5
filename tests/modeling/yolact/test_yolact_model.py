"""The YOLACT meta-arch: every yaml builds, training on images with and without objects gives
finite losses and gradients, inference returns full-image masks usable by the Visualizer."""
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from rsloss_d2.modeling.yolact import YOLACT

from _yolact_helpers import YOLACT_CONFIGS, load_cfg, make_input, tiny_model


@pytest.mark.parametrize("path", YOLACT_CONFIGS)
def test_every_yaml_builds(path):
    cfg = load_cfg(path)
    model = build_model(cfg)
    assert isinstance(model, YOLACT)
    rs = "rs_" in path
    assert model.loss == ("rank_sort" if rs else "softmax_ohem")
    assert (model.semantic_head is None) == rs
    assert model.head.num_cls_outputs == cfg.MODEL.YOLACT.NUM_CLASSES + (0 if rs else 1)
    if "R_50" in path:  # the official setting
        assert cfg.MODEL.YOLACT.INPUT_SIZE == 550 and cfg.INPUT.SSD_AUGMENTATION.ENABLED
        assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        with torch.no_grad():
            feats = model.backbone(torch.zeros(1, 3, 550, 550))
        assert [tuple(feats[f].shape[-2:]) for f in model.in_features] == \
            [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]


def _train_step(model, batch):
    model.train()
    with EventStorage(0):
        losses = model(batch)
        total = sum(losses.values())
        model.zero_grad()
        total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return losses, total, grads


@pytest.mark.parametrize("loss", ["softmax_ohem", "rank_sort"])
def test_training_with_and_without_objects(loss):
    model, _ = tiny_model(loss)
    keys = {"softmax_ohem": {"loss_cls", "loss_bbox", "loss_mask", "loss_semantic"},
            "rank_sort": {"loss_rank", "loss_sort", "loss_bbox", "loss_mask"}}[loss]
    # a batch of images without objects: no NaN, finite gradients, zero box / mask losses
    empty = [make_input(seed=1), make_input(40, 40, seed=2)]
    losses, total, grads = _train_step(model, empty)
    assert set(losses) == keys
    assert torch.isfinite(total) and all(torch.isfinite(g).all() for g in grads)
    assert float(losses["loss_bbox"]) == 0 and float(losses["loss_mask"]) == 0
    # mixed batch: one image with objects (one smaller than the official 4 x 4 filter, one
    # degenerate), one without
    mixed = [make_input(boxes=[(5, 5, 30, 40), (40, 10, 42.5, 12), (50, 20, 50, 30)],
                        classes=[0, 2, 1]), make_input(seed=3)]
    losses, total, grads = _train_step(model, mixed)
    assert torch.isfinite(total) and all(torch.isfinite(g).all() for g in grads)
    assert float(losses["loss_bbox"]) > 0 and float(losses["loss_mask"]) > 0
    # the mask branch (protonet) receives gradient
    assert model.protonet.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("loss,lr", [("softmax_ohem", 0.003), ("rank_sort", 0.01)])
def test_overfitting_one_batch_recovers_it_through_inference(loss, lr):
    """Training on one fixed batch, then inference on it: each GT is found with its class, a box
    and a mask that overlap it — training targets and inference share anchors, deltas, the S×S
    frame, mask assembly and cropping (a mismatch anywhere fails this)."""
    from detectron2.structures import pairwise_iou

    model, _ = tiny_model(loss, opts=["MODEL.YOLACT.INPUT_SIZE", "96"])
    batch = [make_input(96, 128, boxes=[(8, 8, 50, 60), (60, 40, 120, 90)], classes=[0, 1]),
             make_input(80, 80, boxes=[(20, 10, 70, 40)], classes=[2], seed=4)]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    track = "loss_rank" if loss == "rank_sort" else "loss_cls"
    history = []
    for _ in range(80):
        model.train()
        with EventStorage(0):
            losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append(float(losses[track].detach()))
    assert history[-1] < 0.2 * history[0], history[::10]
    model.eval()
    with torch.no_grad():
        out = model(batch)
    for o, b in zip(out, batch):
        pred, gt = o["instances"], b["instances"]
        for j in range(len(gt)):
            same = pred[pred.pred_classes == gt.gt_classes[j]]
            assert len(same), (loss, j)
            best = int(pairwise_iou(same.pred_boxes, gt.gt_boxes[j:j + 1])[:, 0].argmax())
            assert float(pairwise_iou(same.pred_boxes[best:best + 1], gt.gt_boxes[j:j + 1])) > 0.6
            m, t = same.pred_masks[best], gt.gt_masks.tensor[j]
            assert float((m & t).sum()) / float((m | t).sum()) > 0.5, (loss, j)


def test_inference_outputs_full_image_masks_and_visualizer_draws():
    model, cfg = tiny_model("rank_sort", opts=["MODEL.YOLACT.SCORE_THRESH_TEST", "0.0",
                                               "MODEL.YOLACT.DETECTIONS_PER_IMAGE", "7"])
    model.eval()
    inputs = [make_input(48, 64), dict(make_input(30, 20, seed=5), height=90, width=60)]
    with torch.no_grad():
        out = model(inputs)
    for o, (h, w) in zip(out, [(48, 64), (90, 60)]):
        inst = o["instances"]
        assert inst.image_size == (h, w) and len(inst) == 7
        assert inst.pred_masks.shape == (7, h, w) and inst.pred_masks.dtype == torch.bool
        assert inst.pred_classes.dtype == torch.int64 and inst.pred_classes.max() < 3
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        # every mask lies inside its (1-prototype-pixel padded) box
        for m, bx in zip(inst.pred_masks, b):
            ys, xs = np.nonzero(m.numpy())
            if len(xs):
                pad = 2 * max(h, w) / 16
                assert xs.min() >= bx[0] - pad and xs.max() <= bx[2] + pad
    img = np.zeros((90, 60, 3), np.uint8)
    vis = Visualizer(img, MetadataCatalog.get("shapes_val"))
    drawn = vis.draw_instance_predictions(out[1]["instances"]).get_image()
    assert drawn.shape == (90, 60, 3)


def test_warns_when_the_ssd_augmentation_was_not_applied(caplog):
    model, _ = tiny_model("rank_sort", opts=["INPUT.SSD_AUGMENTATION.ENABLED", "True"])
    batch = [make_input(boxes=[(5, 5, 30, 40)], classes=[0]), make_input(seed=1)]
    with caplog.at_level("WARNING"):
        _train_step(model, batch)
    assert "did not come from SSDDatasetMapper" in caplog.text
    caplog.clear()
    model2, _ = tiny_model("rank_sort", opts=["INPUT.SSD_AUGMENTATION.ENABLED", "True"])
    with caplog.at_level("WARNING"):
        _train_step(model2, [dict(x, ssd_augmented=True) for x in batch])
    assert "SSDDatasetMapper" not in caplog.text
