"""GOL heads: normed predictors, the activation box predictor (losses, scores, init), the normed
mask head, GOLROIHeads' init quirk, the tail mask from the training annotations (a json without
``image_count``), RS heads with Gumbel scores, and every GOL / shapes_lt yaml builds."""
import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from rsloss_d2 import add_rsloss_config
from rsloss_d2.layers import NormedConv2d, NormedLinear
from rsloss_d2.modeling.roi_heads import (
    ActivationFastRCNNOutputLayers,
    GOLROIHeads,
    NormedMaskRCNNConvUpsampleHead,
    RSFastRCNNOutputLayers,
)
from rsloss_d2.modeling.roi_heads.activation_fast_rcnn import train_tail_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAIL = torch.tensor([False, True, True, False])
C = 4


def gumbel(x):
    return torch.exp(-torch.exp(-x))


def official_gumbel_bce(logits, targets):
    p = 1 / torch.exp(torch.exp(-torch.clamp(logits, -4, 10)))
    return F.binary_cross_entropy(p, targets, reduction="none")


def predictor(cls_loss, **kw):
    torch.manual_seed(0)
    return ActivationFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=C, loss=cls_loss, tail_mask=TAIL, cls_init="constant",
        cls_init_value=0.001, cls_init_bias=-2.0, **kw)


def proposals(labels, num_images=2):
    """Per-image Instances; RoI boxes = GT boxes shifted by 1 px (non-zero box loss)."""
    out = []
    for lab in torch.tensor(labels).chunk(num_images):
        n = len(lab)
        inst = Instances((64, 64))
        gt = torch.tensor([[4.0, 4.0, 30.0, 30.0]]).repeat(n, 1) + torch.arange(n)[:, None]
        inst.proposal_boxes = Boxes(gt + 1)
        inst.gt_boxes = Boxes(gt)
        inst.gt_classes = lab
        out.append(inst)
    return out


def test_normed_linear_and_conv_formula():
    torch.manual_seed(0)
    lin = NormedLinear(6, 3, temperature=5.0)
    assert abs(lin.weight.std().item() - 0.01) < 0.005 and lin.bias.abs().sum() == 0
    lin.bias.data = torch.tensor([0.1, -0.2, 0.3])
    x = torch.randn(4, 6)
    cos = F.normalize(x, dim=1) @ F.normalize(lin.weight, dim=1).t()
    torch.testing.assert_close(lin(x), 5.0 * cos + lin.bias, rtol=1e-4, atol=1e-5)
    conv = NormedConv2d(6, 3, kernel_size=1, temperature=20.0)
    feat = torch.randn(2, 6, 5, 5)
    cos = torch.einsum("nchw,kc->nkhw", F.normalize(feat, dim=1),
                       F.normalize(conv.weight[:, :, 0, 0], dim=1))
    torch.testing.assert_close(conv(feat), 20.0 * cos + conv.bias[None, :, None, None],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls_loss,columns", [("softmax", C + 1), ("sigmoid", C + 1),
                                              ("gumbel", C + 1), ("droploss", C), ("eql", C)])
def test_predictor_losses(cls_loss, columns):
    head = predictor(cls_loss)
    assert head.cls_score.out_features == columns
    assert torch.all(head.cls_score.weight == 0.001) and torch.all(head.cls_score.bias == -2.0)
    labels = [1, 0, C, C, 2, C]
    props = proposals(labels)
    x = torch.randn(6, 8)
    with EventStorage(0) as storage:
        scores, deltas = head(x)
        losses = head.losses((scores, deltas), props)
    gt = torch.tensor(labels)
    s = scores.detach().double()
    if cls_loss == "softmax":
        ref = F.cross_entropy(s, gt)
    elif cls_loss == "sigmoid":
        ref = F.binary_cross_entropy_with_logits(s, F.one_hot(gt, C + 1).double(),
                                                 reduction="sum") / 6
    elif cls_loss == "gumbel":
        ref = official_gumbel_bce(s, F.one_hot(gt, C + 1).double()).sum().clamp(max=20 * 6) / 6
    elif cls_loss == "eql":
        keep = torch.ones(6, C, dtype=torch.float64)
        keep[[0, 1, 4]] = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 1, 1]],
                                       dtype=torch.float64)
        ref = (official_gumbel_bce(s, F.one_hot(gt, C + 1)[:, :C].double()) * keep).sum() / 6
    if cls_loss == "droploss":  # random drops: bounds of the kept / all-dropped cases
        elem = official_gumbel_bce(s, F.one_hot(gt, C + 1)[:, :C].double())
        assert 0 < losses["loss_cls"].item() <= elem.sum().item() / 6 + 1e-6
        assert storage.latest()["fast_rcnn/drop_tail_ratio"][0] == pytest.approx(2 / 3)
    else:
        assert losses["loss_cls"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert losses["loss_box_reg"].item() > 0
    sum(losses.values()).backward()
    assert head.cls_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls_loss", ["gumbel", "droploss", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_predictor_under_autocast_huge_features(cls_loss, dtype):
    head = predictor(cls_loss)
    x = torch.randn(6, 8) * 1e4  # logits far outside [-4, 10] (and fp16-sized)
    with EventStorage(0), torch.autocast("cpu", dtype=dtype):
        scores, deltas = head(x)
        assert scores.dtype == dtype
        losses = head.losses((scores, deltas), proposals([1, 0, C, C, 2, C]))
    assert losses["loss_cls"].dtype == torch.float32
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.isfinite(head.cls_score.weight.grad).all()


def test_no_foreground_batch_through_predictor():
    head = predictor("droploss")
    with EventStorage(0) as storage:
        losses = head.losses(head(torch.randn(4, 8)), proposals([C, C, C, C]))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0.0
    assert storage.latest()["fast_rcnn/drop_tail_ratio"][0] == -1.0  # NaN ratio logged as -1


@pytest.mark.parametrize("cls_loss,test_act,act", [
    ("gumbel", "", gumbel), ("droploss", "", gumbel), ("sigmoid", "", torch.sigmoid),
    ("softmax", "", lambda s: F.softmax(s, dim=1)), ("sigmoid", "softmax",
                                                    lambda s: F.softmax(s, dim=1))])
def test_predict_probs_use_the_activation(cls_loss, test_act, act):
    head = predictor(cls_loss, test_activation=test_act)
    scores = torch.randn(5, head.cls_score.out_features) * 3
    probs = torch.cat(head.predict_probs((scores, None), proposals([0] * 5, 1)))
    assert probs.shape == (5, C + 1)
    expected = act(scores)
    if expected.shape[1] == C:  # C-column heads: zero dummy background column
        expected = torch.cat([expected, torch.zeros(5, 1)], dim=1)
    torch.testing.assert_close(probs, expected)


def test_droploss_sigmoid_variant_and_bad_options():
    head = predictor("droploss", activation="sigmoid")
    scores = torch.randn(3, C)
    probs = torch.cat(head.predict_probs((scores, None), proposals([0] * 3, 1)))
    torch.testing.assert_close(probs[:, :C], scores.sigmoid())
    with pytest.raises(ValueError):
        predictor("focal")
    with pytest.raises(ValueError):
        predictor("droploss", test_activation="softmax")  # no background column


def test_normed_classifier_init_overrides_constant():
    head = predictor("droploss", normed_temperature=5.0)
    assert isinstance(head.cls_score, NormedLinear) and head.cls_score.temperature == 5.0
    assert head.cls_score.bias.abs().sum() == 0 and head.cls_score.weight.std() < 0.02


def _shapes_lt_cfg(name, opts=()):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes_lt", name))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_roi_heads_init_quirk_and_normed_mask_head():
    cfg = _shapes_lt_cfg("gol_mask_rcnn_R_18_FPN_rfs.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    assert isinstance(heads, GOLROIHeads)
    assert isinstance(heads.box_predictor, ActivationFastRCNNOutputLayers)
    # PyTorch nn.Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), non-zero biases
    fc1 = heads.box_head.fc1
    bound = 1 / math.sqrt(fc1.in_features)
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    assert fc1.bias.abs().sum() > 0 and heads.box_predictor.bbox_pred.bias.abs().sum() > 0
    assert heads.box_predictor.bbox_pred.weight.std() > 0.01  # not N(0, 0.001^2)
    cls = heads.box_predictor.cls_score
    assert torch.all(cls.weight == 0.001) and torch.all(cls.bias == -2.0)
    mask_head = heads.mask_head
    assert isinstance(mask_head, NormedMaskRCNNConvUpsampleHead)
    assert isinstance(mask_head.predictor, NormedConv2d)
    assert mask_head.predictor.temperature == 20.0
    assert list(mask_head.children())[-1] is mask_head.predictor  # still the last layer
    w = mask_head.predictor.weight  # Kaiming normal fan_out: std sqrt(2 / (C * 1 * 1))
    assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[0]), rel=0.15)
    out = mask_head.layers(torch.randn(3, cfg.MODEL.FPN.OUT_CHANNELS, 14, 14))
    assert out.shape == (3, 36, 28, 28)
    # without the quirk: Detectron2's init (zero biases, bbox_pred N(0, 0.001^2))
    cfg.MODEL.GOL.TORCH_DEFAULT_FC_INIT = False
    heads = build_model(cfg).roi_heads
    assert heads.box_head.fc1.bias.abs().sum() == 0
    assert heads.box_predictor.bbox_pred.weight.std() < 0.002


def test_rs_heads_gumbel_scores():
    kw = dict(box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=C)
    scores = torch.randn(4, C) * 3
    props = proposals([0] * 4, 1)
    rs = RSFastRCNNOutputLayers(ShapeSpec(channels=8), **kw)
    rs_gumbel = RSFastRCNNOutputLayers(ShapeSpec(channels=8), cls_activation="gumbel", **kw)
    torch.testing.assert_close(rs.predict_probs((scores, None), props)[0][:, :C], scores.sigmoid())
    probs = rs_gumbel.predict_probs((scores, None), props)[0]
    torch.testing.assert_close(probs[:, :C], gumbel(scores))
    assert probs[:, C].eq(0).all()
    cfg = _shapes_lt_cfg("rs_mask_rcnn_R_18_FPN_rfs_gumbel.yaml")
    assert build_model(cfg).roi_heads.box_predictor.cls_activation == "gumbel"


def _lvis_json_without_image_count(path):
    """A tiny LVIS-format json whose categories lack image_count / instance_count."""
    images, anns = [], []
    # category 1 in 3 images, 2 in 1 image, 3 never (absent from training), 4 in 2 images;
    # image 5 has no annotation (not counted in N)
    content = {1: [1, 2], 2: [1], 3: [1, 4], 4: [4], 5: []}
    aid = 1
    for iid, cats in content.items():
        images.append({"id": iid, "height": 32, "width": 32, "neg_category_ids": [],
                       "not_exhaustive_category_ids": [],
                       "coco_url": f"http://x/train2017/{iid:012d}.jpg"})
        for c in cats:
            anns.append({"id": aid, "image_id": iid, "category_id": c, "bbox": [1, 1, 5, 5],
                         "area": 25.0, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]})
            aid += 1
    cats = [{"id": i, "name": f"c{i}", "frequency": "r", "synset": f"c{i}.n.01"}
            for i in range(1, 5)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def test_tail_mask_derived_from_annotations_without_image_count(tmp_path):
    path = str(tmp_path / "lvis_no_count.json")
    _lvis_json_without_image_count(path)
    name = "gol_test_lvis_no_image_count"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_lvis_json(path, str(tmp_path), None))
    try:
        # counts [3, 1, 0, 2] over N = 4 images with annotations: f = [.75, .25, 0, .5]
        assert train_tail_mask([name], 4, 0.5).tolist() == [False, True, True, False]
        assert train_tail_mask([name], 4, 0.3, num_images=10).tolist() == [False, True, True, True]
        with pytest.raises(ValueError, match="NUM_CLASSES"):
            train_tail_mask([name], 3, 0.5)
    finally:
        DatasetCatalog.remove(name)
    meta = MetadataCatalog.get("lvis_v1_train")  # builtin: Detectron2's class_image_count
    assert meta.get("class_image_count") is not None
    assert int(train_tail_mask(["lvis_v1_train"], 1203, 0.0011, 99388).sum()) == 815


GOL_LEAVES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "gol",
                                                                        "*.yaml"))
                    if not os.path.basename(p).startswith("Base-"))
SHAPES_LT_LEAVES = ["mask_rcnn_R_18_FPN_rfs_sigmoid.yaml", "mask_rcnn_R_18_FPN_rfs_softmax.yaml",
                    "mask_rcnn_R_18_FPN_rfs_gumbel.yaml", "gol_mask_rcnn_R_18_FPN_rfs.yaml",
                    "rs_mask_rcnn_R_18_FPN_rfs_gumbel.yaml"]


def test_every_row_has_a_config():
    assert len(GOL_LEAVES) == 6, GOL_LEAVES
    readme = open(os.path.join(REPO, "configs", "gol", "README.md")).read()
    for name in GOL_LEAVES:
        assert name in readme, name
    readme = open(os.path.join(REPO, "configs", "shapes_lt", "README.md")).read()
    for name in SHAPES_LT_LEAVES:
        assert name in readme, name


@pytest.mark.parametrize("name", GOL_LEAVES)
def test_gol_config_builds(name):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "gol", name))
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.02
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 4 and cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    if name.startswith("gol_"):  # GOL rows: DropLoss-Gumbel, normed mask, RFS 1e-3, NMS 0.3
        assert pred.loss == "droploss" and pred.activation == "gumbel"
        assert isinstance(model.roi_heads.mask_head, NormedMaskRCNNConvUpsampleHead)
        assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
        assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001 and pred.test_nms_thresh == 0.3
        assert cfg.MODEL.RESNETS.DEPTH == (101 if "R_101" in name else 50)
        assert pred.num_classes == (1230 if "v0.5" in name else 1203)
    else:  # activation ablation: no RFS, 12 epochs, NMS 0.5
        assert pred.loss == name.split("_")[-1][:-5]
        assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" and pred.test_nms_thresh == 0.5
        assert pred.cls_score.out_features == 1204


@pytest.mark.parametrize("name", SHAPES_LT_LEAVES)
def test_shapes_lt_config_builds(name):
    cfg = _shapes_lt_cfg(name)
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.03 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 36
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.num_classes == 36
