#!/usr/bin/env python
"""How much an R-CNN box head's regression improves its positive proposals (trained weights).

    python tools/diagnostics/measure_box_regression.py --config-file configs/shapes/faster_rcnn_R_18_FPN_quick.yaml \
        --weights output/.../model_final.pth [--batches 15] [KEY VALUE ...]

On `--batches` training batches (the config's training loader, augmentation included, fixed
seed) the model proposes boxes in training mode, the ROI heads label them as in training
(Detectron2's sampler for the standard heads, all proposals for the RS heads), and for every
positive RPN proposal (the appended ground-truth boxes are left out: their IoU is 1 by
construction) the IoU with its ground truth is measured before and after the box head's
regression (the GT-class row of a class-specific regressor). Prints one line: the number of
positives, mean IoU before / after, the share the regression improved, and the share with
IoU >= 0.75 before / after; then a second line on the box head's output features of the same
positives: mean L2 norm, share of active (> 0) entries and share of units never active (dead
ReLUs, through which the regression gets no gradient). Used in docs/experiments/rs_faster_gap.md.

`--fit STEPS` (RS box predictors only) instead trains, on one fixed batch with the backbone and
RPN frozen, the box head + predictor from the given weights for STEPS SGD steps (lr 0.02,
momentum 0.9) with three losses, and prints the mean IoU of the positives' regressed boxes every
`STEPS // 5` steps: `rs` (the RS head's own losses: L_rank + L_sort + λ·L_box, λ = (L_rank +
L_sort) / L_box), `rs_box` (λ·L_box alone) and `rs_cls_l1` (L_rank + L_sort + Detectron2's L1
box loss on the deltas, summed and divided by 512 as the standard head). It isolates how the
value-based λ follows the falling classification loss.
"""
import argparse
import os


import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from rsloss_d2 import engine
from rsloss_d2.modeling.box_losses import aligned_iou, foreground_indices


def labelled_rois(model, batch):
    """Proposals labelled as in training (``gt_classes``, ``gt_boxes``; appended GT boxes
    included) and their pooled box features (R, C, 7, 7), in training mode (GroupNorm: no
    running statistics)."""
    model.train()
    heads = model.roi_heads
    with EventStorage(0):
        images = model.preprocess_image(batch)
        targets = [x["instances"].to(model.device) for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        proposals = heads.label_and_sample_proposals(proposals, targets)
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features],
                              [p.proposal_boxes for p in proposals])
    return proposals, pooled


def gt_class_deltas(deltas, classes, pos):
    """(P, 4) deltas of the rows `pos`: the GT-class row of a class-specific regressor."""
    if deltas.shape[1] > 4:
        return deltas.view(len(classes), -1, 4)[pos, classes[pos]]
    return deltas[pos]


def positive_rows(proposals, num_classes, drop_appended_gt=True):
    """Concatenated (classes (R,), proposal boxes (R, 4), GT boxes (R, 4)) of labelled proposals
    and the (P,) indices of their positives, the appended GT boxes (proposal == its GT box, IoU 1
    by construction) left out unless ``drop_appended_gt`` is False."""
    classes = torch.cat([p.gt_classes for p in proposals])
    boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
    gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])
    pos = foreground_indices(classes, num_classes)
    if drop_appended_gt:
        pos = pos[~(boxes[pos] == gt_boxes[pos]).all(dim=1)]
    return classes, boxes, gt_boxes, pos


@torch.no_grad()
def positives_pass(model, batches):
    """One forward per batch: (before (P,), after (P,), features (P, D)) over all `batches` —
    IoUs of the positive RPN proposals with their GT before and after the box head's regression,
    and the box head's output features of those positives."""
    heads = model.roi_heads
    before, after, feats = [], [], []
    for batch in batches:
        proposals, pooled = labelled_rois(model, batch)
        box_features = heads.box_head(pooled)
        _, deltas = heads.box_predictor(box_features)
        classes, boxes, gt_boxes, pos = positive_rows(proposals, heads.num_classes)
        pos_deltas = gt_class_deltas(deltas, classes, pos)
        regressed = heads.box_predictor.box2box_transform.apply_deltas(pos_deltas, boxes[pos])
        before.append(aligned_iou(boxes[pos], gt_boxes[pos]))
        after.append(aligned_iou(regressed, gt_boxes[pos]))
        feats.append(box_features[pos].flatten(1))
    return torch.cat(before), torch.cat(after), torch.cat(feats)


def proposal_ious(model, batches):
    """(before, after): (P,) IoUs of the positive RPN proposals with their GT, before and after
    the box head's regression, over all `batches` (lists of Detectron2 dataset dicts)."""
    return positives_pass(model, batches)[:2]


def feature_stats(feats):
    """(mean L2 norm, share of (positive, unit) entries > 0, share of units that are 0 on every
    positive) of (P, D) box-head output features (after its last ReLU). The regression branch can
    only use — and send gradient through — active units."""
    active = feats > 0
    return (float(feats.norm(dim=1).mean()), float(active.float().mean()),
            float((~active.any(dim=0)).float().mean()))


def positive_feature_stats(model, batches):
    """:func:`feature_stats` of the box head's features of the positive RPN proposals."""
    return feature_stats(positives_pass(model, batches)[2])


def fit_fixed_batch(model, batch, steps, loss_name, lr=0.02):
    """[(step, mean IoU of the positives' regressed boxes, λ of the RS head)] every
    steps // 5 steps."""
    import copy

    from torch.nn import functional as F

    model = copy.deepcopy(model)
    heads = model.roi_heads
    with torch.no_grad():
        proposals, pooled = labelled_rois(model, batch)
    classes, boxes, gt_boxes, pos = positive_rows(proposals, heads.num_classes,
                                                  drop_appended_gt=False)
    b2b = heads.box_predictor.box2box_transform
    target_deltas = b2b.get_deltas(boxes[pos], gt_boxes[pos])
    params = list(heads.box_head.parameters()) + list(heads.box_predictor.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    trace = []
    for step in range(steps + 1):
        scores, deltas = heads.box_predictor(heads.box_head(pooled))
        pos_deltas = gt_class_deltas(deltas, classes, pos)
        with EventStorage(0):
            losses, out = heads.box_predictor.rs_losses((scores, deltas), proposals)
        if step % max(steps // 5, 1) == 0 or step == steps:
            regressed = b2b.apply_deltas(pos_deltas.detach(), boxes[pos])
            trace.append((step, float(aligned_iou(regressed, gt_boxes[pos]).mean()),
                          float(out.box_lambda)))
        if step == steps:
            break
        cls = losses["loss_roi_rank"] + losses["loss_roi_sort"]
        if loss_name == "rs":
            loss = cls + losses["loss_roi_bbox"]
        elif loss_name == "rs_box":
            loss = losses["loss_roi_bbox"]
        elif loss_name == "rs_cls_l1":
            loss = cls + F.l1_loss(pos_deltas, target_deltas, reduction="sum") / 512
        else:
            raise ValueError(loss_name)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return trace


def summary_line(name, before, after):
    return (f"{name}: {before.numel()} positive RPN proposals, mean IoU before {before.mean():.3f}"
            f" after {after.mean():.3f} (gain {after.mean() - before.mean():+.3f}), improved "
            f"{(after > before).float().mean():.2f}, IoU >= 0.75 before "
            f"{(before >= 0.75).float().mean():.2f} after {(after >= 0.75).float().mean():.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--fit", type=int, default=0, help="fixed-batch fit steps (RS heads)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    a = parser.parse_args(argv)
    args = engine.argument_parser().parse_args(
        ["--config-file", a.config_file, "SEED", str(a.seed), "DATALOADER.NUM_WORKERS", "0"]
        + a.opts)
    cfg = engine.build_cfg(args)
    seed_all_rng(a.seed)  # same batches (sampler order, augmentation) on every call
    model = engine.Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(a.weights)
    loader = iter(build_detection_train_loader(cfg))
    if a.fit:
        batch = next(loader)
        traces = {}
        for loss_name in ("rs", "rs_box", "rs_cls_l1"):
            traces[loss_name] = fit_fixed_batch(model, batch, a.fit, loss_name)
            print(f"{loss_name:10s} " + "  ".join(f"step {s}: IoU {v:.3f} λ {lam:.2f}"
                                                   for s, v, lam in traces[loss_name]))
        return traces
    batches = [next(loader) for _ in range(a.batches)]
    before, after, feats = positives_pass(model, batches)
    line = summary_line(os.path.basename(a.config_file), before, after)
    print(line)
    norm, active, dead = feature_stats(feats)
    print(f"box-head features of those positives: mean norm {norm:.2f}, active (> 0) {active:.2f},"
          f" units never active {dead:.2f}")
    return before, after


if __name__ == "__main__":
    main()
