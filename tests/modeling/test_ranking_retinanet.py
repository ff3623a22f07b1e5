"""RankingRetinaNet (aLRP / AP-Loss RetinaNet, RS-ATSS, RS-PAA) on fixed CPU batches: training
progress, bad input (no GT, no positive, degenerate boxes), invalid anchors ignored, the aLRP
self-balance (paper rule, derived period, checkpoint / resume), logged statistics, inference."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import cat
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from rsloss_d2.modeling.matchers import IGNORED, valid_anchor_mask
from rsloss_d2.modeling.ranking_retinanet import RankingRetinaNet
from rsloss_d2.modeling.ranking_retinanet.meta_arch import _gt_tables

from _dense_helpers import build, dense_cfg, fixed_batch, make_image, train_steps

TRAINED = ["aLRP", "AP", "RS-ATSS", "RS-PAA"]
LOSS_KEYS = {"aLRP": {"loss_cls", "loss_bbox"}, "AP": {"loss_cls", "loss_bbox"},
             "RS-ATSS": {"loss_rank", "loss_sort", "loss_bbox"},
             "RS-PAA": {"loss_rank", "loss_sort", "loss_bbox"}}


@pytest.mark.parametrize("name", TRAINED)
def test_trains_on_fixed_batch(name):
    model = build(dense_cfg(name))
    assert isinstance(model, RankingRetinaNet)
    history = train_steps(model, fixed_batch(), steps=8, lr=0.01)
    assert set(history[0]) == LOSS_KEYS[name]
    key = "loss_rank" if name.startswith("RS") else "loss_cls"
    assert history[-1][key] < 0.5 * history[0][key], [h[key] for h in history]
    if name.startswith("RS"):  # value-balanced: box loss has the value of L_rank + L_sort
        for h in history:
            assert h["loss_bbox"] == pytest.approx(h["loss_rank"] + h["loss_sort"], rel=1e-5)


@pytest.mark.parametrize("name", TRAINED)
def test_no_gt_and_no_positive_give_zero_losses_in_the_graph(name):
    model = build(dense_cfg(name))
    model.train()
    train_steps(model, fixed_batch(empty_second=True), steps=1)  # one image without GT: fine
    empty = fixed_batch(empty_second=True)[1]
    calls = int(model.self_balance.num_calls) if model.self_balance is not None else None
    with EventStorage(0):
        losses = model([empty, empty])
    assert all(float(v) == 0 for v in losses.values()), losses
    total = sum(losses.values())
    assert total.requires_grad  # attached to the graph: the trainer's backward works
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if calls is not None:  # an iteration without positives does not advance the self-balance
        assert int(model.self_balance.num_calls) == calls


@pytest.mark.parametrize("name", TRAINED)
def test_degenerate_boxes_train_without_nan(name):
    model = build(dense_cfg(name))
    batch = fixed_batch()
    inst = batch[1]["instances"]
    extra = torch.tensor([[20.0, 20.0, 20.0, 40.0],   # zero width
                          [50.0, 50.0, 51.0, 51.0],   # 1 px
                          [40.0, 44.0, 90.0, 80.0]])  # beyond the image border
    new = Instances(inst.image_size)
    new.gt_boxes = Boxes(torch.cat([inst.gt_boxes.tensor, extra]))
    new.gt_classes = torch.cat([inst.gt_classes, torch.tensor([0, 1, 2])])
    batch[1]["instances"] = new
    history = train_steps(model, batch, steps=3, lr=0.01)  # asserts finite losses and grads
    assert all(v == v for h in history for v in h.values())


@pytest.mark.parametrize("name", ["aLRP", "RS-ATSS"])
def test_anchors_in_the_batch_padding_are_ignored(name):
    """An image smaller than the batch: its anchors beyond its own padded size get target −1
    (zero gradient), while its valid negatives get gradient."""
    model = build(dense_cfg(name))
    model.train()
    big = make_image(96, [(0, 6, 8, 30, 36), (1, 50, 40, 80, 70)])
    small = make_image(40, [(2, 4, 6, 30, 34)])
    images = model.preprocess_image([big, small])
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(model.head(feats), [3, 4])
    anchors = model.anchor_generator(feats)
    valid = valid_anchor_mask([a.tensor for a in anchors], model.anchor_generator.strides,
                              images.image_sizes, 32)
    assert valid[0].all() and not valid[1].all()
    logits = cat(logits, 1).detach().requires_grad_()
    deltas = cat(deltas, 1).detach()
    gts = [big["instances"], small["instances"]]
    with EventStorage(0):
        assigned, _ = model.assign(anchors, valid, gts, logits, deltas)
        losses = model.losses(anchors, logits, deltas, assigned, *_gt_tables(gts))
    assert (assigned[1, ~valid[1]] == IGNORED).all()
    key = "loss_cls" if name == "aLRP" else "loss_rank"
    losses[key].backward()
    grad = logits.grad.abs().sum(-1)
    assert (grad[1, ~valid[1]] == 0).all()
    assert (grad[1, valid[1]] > 0).any()


def _run_steps(model, batches):
    """One SGD step per batch; returns per-step (loss_cls, loss_loc, sb weight) from the storage."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    rows = []
    with EventStorage(0) as storage:
        for i, batch in enumerate(batches):
            storage.iter = i
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            latest = {k: v[0] for k, v in storage.latest().items()}
            rows.append((float(losses["loss_cls"]), latest["dense/loss_loc_unweighted"],
                         latest["dense/self_balance_weight"], float(losses["loss_bbox"])))
    return rows


def test_self_balance_updates_once_per_period_with_the_paper_rule():
    model = build(dense_cfg("aLRP"))  # period 3 (TINY_OVERRIDES)
    model.train()
    batch = fixed_batch()
    empty = fixed_batch(empty_second=True)[1]
    # step 3 has no positive: it must not count
    rows = _run_steps(model, [batch, batch, batch, [empty, empty], batch, batch, batch])
    cls = [r[0] for r in rows]
    loc = [r[1] for r in rows]
    weight = [r[2] for r in rows]
    assert weight[0] == weight[1] == 50.0
    expect = (sum(loc[0:3]) / 3 + sum(cls[0:3]) / 3) / (sum(loc[0:3]) / 3)
    assert weight[2] == pytest.approx(expect, rel=1e-5)  # already used at the 3rd step
    assert weight[3] == weight[4] == weight[5] == pytest.approx(expect, rel=1e-5)
    later = [0, 1, 2, 4, 5, 6]
    assert weight[6] == pytest.approx(
        (sum(loc[i] for i in later[3:]) / 3 + sum(cls[i] for i in later[3:]) / 3)
        / (sum(loc[i] for i in later[3:]) / 3), rel=1e-5)
    for c, l, w, box in rows:  # the box loss is the weighted localisation component
        assert box == pytest.approx(w * l, rel=1e-5)


def test_self_balance_state_survives_checkpoint_and_resume(tmp_path):
    batch = fixed_batch()
    model = build(dense_cfg("aLRP"))
    model.train()
    _run_steps(model, [batch] * 4)  # updated at step 3, one call accumulated since
    sb = model.self_balance
    assert float(sb.weight) != 50.0 and int(sb.num_calls) == 1
    DetectionCheckpointer(model, str(tmp_path)).save("model_0000003")
    resumed = build(dense_cfg("aLRP"), seed=5)
    resumed.train()
    DetectionCheckpointer(resumed, str(tmp_path)).resume_or_load("unused", resume=True)
    for name in ("weight", "stats", "num_calls"):
        assert torch.equal(getattr(resumed.self_balance, name), getattr(sb, name)), name
    fresh = build(dense_cfg("aLRP"))
    fresh.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("self_balance.")}, strict=False)
    fresh.train()
    rows_a = _run_steps(model, [batch] * 2)
    rows_b = _run_steps(resumed, [batch] * 2)
    rows_f = _run_steps(fresh, [batch] * 2)
    assert [r[2] for r in rows_a] == pytest.approx([r[2] for r in rows_b], rel=1e-6)
    assert rows_b[1][2] != rows_b[0][2]  # the resumed counter reaches the period at call 3
    assert rows_f[1][2] == 50.0  # a state-less model would still be at its first period


def test_self_balance_period_is_derived_from_dataset_size_and_batch():
    name = "dense_sb_period_test"
    if name not in DatasetCatalog.list():
        ann = [{"bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": 0}]
        DatasetCatalog.register(name, lambda: [
            {"file_name": f"{i}.png", "image_id": i, "height": 8, "width": 8,
             "annotations": ann if i < 10 else []} for i in range(13)])
        MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
    cfg = dense_cfg("aLRP", ["MODEL.RANKING_RETINANET.SELF_BALANCE_PERIOD", "0",
                             "DATASETS.TRAIN", f"('{name}',)", "SOLVER.IMS_PER_BATCH", "4"])
    model = build(cfg)  # building (e.g. for inference) does not read the training set
    assert int(model.self_balance.period) == 1
    train_steps(model, fixed_batch(), steps=1)
    assert model.self_balance.period == 3  # ceil(10 non-empty images / 4)
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    model = build(cfg)
    train_steps(model, fixed_batch(), steps=1)
    assert model.self_balance.period == 4  # ceil(13 / 4)


@pytest.mark.parametrize("name,keys", [
    ("aLRP", {"self_balance_weight", "loss_loc_unweighted", "mean_pos_giou_loss"}),
    ("RS-ATSS", {"lambda_bbox", "loss_bbox_unbalanced", "mean_pos_iou"}),
    ("RS-PAA", {"lambda_bbox", "loss_bbox_unbalanced", "mean_pos_iou", "paa_num_candidates"}),
])
def test_statistics_go_to_event_storage(name, keys):
    model = build(dense_cfg(name))
    model.train()
    with EventStorage(0) as storage:
        losses = model(fixed_batch())
        latest = {k: v[0] for k, v in storage.latest().items()}
    for k in keys | {"num_pos", "num_neg"}:
        assert f"dense/{k}" in latest, (k, sorted(latest))
    assert latest["dense/num_pos"] > 0
    if name.startswith("RS"):
        lam = latest["dense/lambda_bbox"]
        unbalanced = latest["dense/loss_bbox_unbalanced"]
        assert float(losses["loss_bbox"]) == pytest.approx(lam * unbalanced, rel=1e-5)


def _inference_inputs():
    """Two levels of hand-made anchors (zero deltas: box = anchor) and per-class scores."""
    level0 = torch.tensor([[0.0, 0.0, 8.0, 8.0], [20.0, 0.0, 28.0, 8.0], [40.0, 0.0, 48.0, 8.0]])
    scores0 = torch.tensor([[0.9, 0.0, 0.0], [0.2, 0.7, 0.0], [0.6, 0.65, 0.3]])
    level1 = torch.tensor([[0.0, 30.0, 10.0, 40.0], [1.0, 30.0, 11.0, 40.0],
                           [50.0, 50.0, 70.0, 70.0]])  # the last one crosses the 64 px border
    scores1 = torch.tensor([[0.8, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.04]])
    return ([Boxes(level0), Boxes(level1)], [scores0, scores1],
            [torch.zeros(3, 4), torch.zeros(3, 4)])


@pytest.mark.parametrize("voting", [False, True])
def test_inference_is_mmdet_dense_test_with_optional_score_voting(voting):
    model = build(dense_cfg("RS-PAA", ["MODEL.RETINANET.TOPK_CANDIDATES_TEST", "2",
                                       "MODEL.RANKING_RETINANET.SCORE_VOTING", str(voting)]))
    model.eval()
    anchors, scores, deltas = _inference_inputs()
    out = model.inference_single_image(anchors, scores, deltas, (64, 64))
    got = {(tuple(b), int(c)): float(s) for b, c, s in
           zip(out.pred_boxes.tensor.tolist(), out.pred_classes, out.scores)}
    # level 0: the 2 anchors of highest *max* score (mmdet nms_pre), all their classes > 0.05
    # (a top-2 over (anchor, class) pairs would drop (anchor 1, class 0) and keep anchor 2);
    # level 1: anchor 1 (IoU 0.82 with anchor 0, same class) is suppressed by NMS 0.6
    if not voting:
        assert got == pytest.approx({((0.0, 0.0, 8.0, 8.0), 0): 0.9,
                                     ((20.0, 0.0, 28.0, 8.0), 1): 0.7,
                                     ((20.0, 0.0, 28.0, 8.0), 0): 0.2,
                                     ((0.0, 30.0, 10.0, 40.0), 0): 0.8})
    else:  # voted box of the level-1 detection: its own box and the suppressed one
        iou = 90.0 / 110.0
        p_self, p_other = 0.8, torch.exp(torch.tensor(-(1 - iou) ** 2 / 0.025)).item() * 0.5
        x0 = (p_self * 0.0 + p_other * 1.0) / (p_self + p_other)
        x1 = (p_self * 10.0 + p_other * 11.0) / (p_self + p_other)
        voted = [b for (b, c) in got if b[1] == 30.0]
        assert len(voted) == 1 and voted[0] == pytest.approx((x0, 30.0, x1, 40.0), rel=1e-5)
        assert sorted(got.values()) == pytest.approx([0.2, 0.7, 0.8, 0.9])
    assert ((out.pred_boxes.tensor >= 0) & (out.pred_boxes.tensor <= 64)).all()


def test_eval_mode_forward_gives_instances():
    model = build(dense_cfg("RS-ATSS", ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.3"]))
    train_steps(model, fixed_batch(), steps=2, lr=0.01)
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in x.items() if k != "instances"} for x in fixed_batch()])
    for o in out:
        inst = o["instances"]
        assert len(inst) <= model.max_detections_per_image
        assert ((inst.scores > 0.3) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all()
