"""RSCascadeROIHeads: GT boxes re-added as proposals in every stage, stage loss weights, test-time
averaging of the stages' raw logits before the sigmoid."""
import torch
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

import rsloss_d2.modeling.roi_heads.rs_cascade_rcnn as rs_cascade

from _rs_helpers import build, fixed_batch, rs_cfg, train_steps

CONFIG = "rs_cascade_rcnn_R_18_FPN_quick.yaml"


def test_stage_proposals_are_refined_boxes_plus_exact_gt(monkeypatch):
    model = build(rs_cfg(CONFIG))
    model.train()
    batch = fixed_batch()
    seen = {}
    real_match = model.roi_heads._match_and_label_boxes
    real_refine = model.roi_heads._refined_proposals_with_gt

    def spy_refine(boxes, num_gts, targets):
        seen.setdefault("refined_in", []).append([b.detach().clone() for b in boxes])
        return real_refine(boxes, num_gts, targets)

    def spy_match(proposals, stage, targets):
        seen.setdefault("stages", []).append([p.proposal_boxes.tensor.clone() for p in proposals])
        return real_match(proposals, stage, targets)

    monkeypatch.setattr(model.roi_heads, "_refined_proposals_with_gt", spy_refine)
    monkeypatch.setattr(model.roi_heads, "_match_and_label_boxes", spy_match)
    with EventStorage(0):
        model(batch)
    assert len(seen["stages"]) == 2  # stages 1 and 2
    for refined, stage_boxes in zip(seen["refined_in"], seen["stages"]):
        for img, (prev, boxes) in enumerate(zip(refined, stage_boxes)):
            gt = batch[img]["instances"].gt_boxes.tensor
            n_gt = len(gt)
            assert torch.equal(boxes[-n_gt:], gt)  # exact GT boxes at the end
            # the refined GT proposals of the previous stage are dropped, the others kept
            kept = Boxes(prev[:-n_gt].clone())
            kept.clip((64, 64))
            kept = kept[kept.nonempty()].tensor
            assert torch.allclose(boxes[:-n_gt], kept)


def test_stage_loss_weights_scale_each_stage():
    batch = fixed_batch()
    values = {}
    for weights in ("[1.0, 1.0, 1.0]", "[1.0, 0.5, 0.25]"):
        model = build(rs_cfg(CONFIG, ["MODEL.RS_ROI_HEADS.CASCADE_STAGE_LOSS_WEIGHTS", weights]))
        values[weights] = train_steps(model, batch, steps=1, lr=0.0)[0]
    ones, scaled = values["[1.0, 1.0, 1.0]"], values["[1.0, 0.5, 0.25]"]
    for k, w in ((0, 1.0), (1, 0.5), (2, 0.25)):
        for n in ("rank", "sort", "bbox"):
            key = f"loss_roi_{n}_stage{k}"
            assert abs(scaled[key] - w * ones[key]) < 1e-6 * max(1.0, ones[key])
    assert ones["loss_roi_rank_stage2"] > 0


def test_inference_averages_raw_logits_then_sigmoid(monkeypatch):
    model = build(rs_cfg(CONFIG, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]))
    model.eval()
    logits = []
    for predictor in model.roi_heads.box_predictor:
        predictor.register_forward_hook(lambda m, i, o: logits.append(o[0].detach()))
    # make the stages disagree, so that mean-of-logits and mean-of-probabilities differ
    with torch.no_grad():
        for k, predictor in enumerate(model.roi_heads.box_predictor):
            predictor.cls_score.bias.fill_(3.0 * (k - 1))
    captured = {}
    real = rs_cascade.fast_rcnn_inference

    def spy(boxes, scores, *args):
        captured["scores"] = scores
        return real(boxes, scores, *args)

    monkeypatch.setattr(rs_cascade, "fast_rcnn_inference", spy)
    with torch.no_grad():
        model([{k: v for k, v in x.items() if k != "instances"} for x in fixed_batch()])
    assert len(logits) == 3
    expected = torch.stack(logits).mean(0).sigmoid()
    got = torch.cat(captured["scores"])
    assert torch.allclose(got[:, :-1], expected, atol=1e-6)
    assert (got[:, -1] == 0).all()  # dummy background column
    mean_prob = torch.stack(logits).sigmoid().mean(0)
    assert not torch.allclose(mean_prob, expected, atol=1e-3)
