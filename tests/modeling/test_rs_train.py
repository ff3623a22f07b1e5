"""RS-Faster / RS-Mask / RS-Cascade R-CNN train on a fixed CPU batch (finite, decreasing losses),
also with images without GT; every RS shapes / shapes_lt yaml loads and builds; inference uses
sigmoid scores and the test threshold."""
import glob
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rsloss_d2 import add_rsloss_config
from rsloss_d2.modeling.proposal_generator import RSRPN
from rsloss_d2.modeling.roi_heads import (
    RSCascadeROIHeads,
    RSMaskRCNNConvUpsampleHead,
    RSStandardROIHeads,
)

from _rs_helpers import REPO, build, fixed_batch, rs_cfg, train_steps

CASES = {
    "rs_faster_rcnn_R_18_FPN_quick.yaml": {"loss_roi_rank", "loss_roi_sort", "loss_roi_bbox"},
    "rs_mask_rcnn_R_18_FPN_quick.yaml": {"loss_roi_rank", "loss_roi_sort", "loss_roi_bbox",
                                         "loss_mask"},
    "rs_cascade_rcnn_R_18_FPN_quick.yaml": {
        f"loss_roi_{n}_stage{k}" for n in ("rank", "sort", "bbox") for k in range(3)},
}
RPN_LOSSES = {"loss_rpn_rank", "loss_rpn_sort", "loss_rpn_bbox"}


@pytest.mark.parametrize("config", sorted(CASES))
def test_trains_on_fixed_batch(config):
    # The cascade needs enough proposals for stage 2 (IoU 0.7) to have positives other than the
    # GT boxes: with only GT boxes (GIoU loss ~0) λ is ~1e3 and one SGD step can throw every
    # stage-2 box off its GT (IoU 0 → no positive → λ = 0, a dead stage; official behaviour).
    opts = ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "300"] if "cascade" in config else []
    model = build(rs_cfg(config, opts))
    # 12 steps: with the shapes base's GroupNorm 4-conv box head the cascade's ROI losses start
    # to fall only after ~7 steps on this batch (6.57 -> 5.93 after 8, -> 2.5 after 12)
    history = train_steps(model, fixed_batch(), steps=12, lr=0.01)
    assert set(history[0]) == CASES[config] | RPN_LOSSES
    roi = [sum(v for k, v in h.items() if "roi" in k or "mask" in k) for h in history]
    rpn = [sum(v for k, v in h.items() if "rpn" in k) for h in history]
    assert roi[-1] < 0.9 * roi[0], roi
    assert rpn[-1] < rpn[0], rpn
    for name in history[0]:
        if "rank" in name:  # every head (and cascade stage) still has positives and improves
            assert 0 < history[-1][name] < history[0][name], (name, [h[name] for h in history])
    # balanced losses: each box (and mask) loss has the value of its L_rank + L_sort
    for h in history:
        for suffix in ([f"_stage{k}" for k in range(3)] if "cascade" in config else [""]):
            rank, sort = h[f"loss_roi_rank{suffix}"], h[f"loss_roi_sort{suffix}"]
            assert h[f"loss_roi_bbox{suffix}"] == pytest.approx(rank + sort, rel=1e-5, abs=1e-7)
        if "loss_mask" in h:
            cls = h["loss_roi_rank"] + h["loss_roi_sort"]
            assert h["loss_mask"] == pytest.approx(cls, rel=1e-5)


@pytest.mark.parametrize("config", sorted(CASES))
def test_images_without_gt_train_without_nan(config):
    model = build(rs_cfg(config))
    train_steps(model, fixed_batch(empty_second=True), steps=2, lr=0.004)  # one empty image
    empty = fixed_batch(empty_second=True)[1]
    history = train_steps(model, [empty, empty], steps=2, lr=0.004)  # no GT in the batch at all
    assert all(v == 0 for v in history[-1].values())


def test_inference_sigmoid_scores_and_threshold():
    cfg = rs_cfg("rs_mask_rcnn_R_18_FPN_quick.yaml", ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"])
    model = build(cfg)
    train_steps(model, fixed_batch(), steps=2, lr=0.004)
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in x.items() if k != "instances"} for x in fixed_batch()])
    for o in out:
        inst = o["instances"]
        assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert ((inst.scores > 0.3) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all()
        assert inst.pred_masks.shape[1:] == (64, 64)


def _yamls():
    return sorted(glob.glob(os.path.join(REPO, "configs", "shapes", "rs_*rcnn*.yaml"))
                  + glob.glob(os.path.join(REPO, "configs", "shapes", "faster_rcnn_*.yaml"))
                  + glob.glob(os.path.join(REPO, "configs", "shapes", "cascade_rcnn_*.yaml"))
                  + glob.glob(os.path.join(REPO, "configs", "shapes_lt", "*.yaml")))


@pytest.mark.parametrize("path", _yamls(), ids=os.path.basename)
def test_config_loads_and_builds(path):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    name = os.path.basename(path)
    if name.startswith("rs_"):
        assert isinstance(model.proposal_generator, RSRPN)
        heads = RSCascadeROIHeads if "cascade" in name else RSStandardROIHeads
        assert isinstance(model.roi_heads, heads)
        assert tuple(model.proposal_generator.box2box_transform.weights) == (10, 10, 5, 5)
        if cfg.MODEL.MASK_ON:
            assert isinstance(model.roi_heads.mask_head, RSMaskRCNNConvUpsampleHead)
    if name.startswith("cascade_"):
        from detectron2.modeling.roi_heads import CascadeROIHeads

        assert type(model.roi_heads) is CascadeROIHeads
        weights = [tuple(p.box2box_transform.weights) for p in model.roi_heads.box_predictor]
        assert weights == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    if "shapes_lt" in path:
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 36
        assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
        assert cfg.DATASETS.TRAIN == ("shapes_lt_train",)


@pytest.fixture(scope="module")
def shapes_lt_train(tmp_path_factory):
    """The generated shapes_lt train set at its default size (600 images): (dataset dicts,
    {contiguous class id: LVIS frequency})."""
    from detectron2.data.datasets.lvis import load_lvis_json

    from rsloss_d2.data.synthetic import generate_all

    root = str(tmp_path_factory.mktemp("shapes_lt"))
    paths = generate_all(root, num_lt_train=600, num_lt_val=4, seed=0, progress=False,
                         which=("shapes_lt",))
    with open(paths["shapes_lt_train"]) as f:
        freq = {c["id"] - 1: c["frequency"] for c in json.load(f)["categories"]}
    return load_lvis_json(paths["shapes_lt_train"], root, None), freq


@pytest.mark.parametrize("name", ["mask_rcnn_R_18_FPN_rfs.yaml", "rs_mask_rcnn_R_18_FPN_rfs.yaml"])
def test_shapes_lt_repeat_factor_sampling_oversamples_rare_classes(name, shapes_lt_train):
    """The shapes_lt threshold makes RFS act on the generated set: images of rare classes are
    repeated (r > 1), images with only frequent classes are not."""
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    dicts, freq = shapes_lt_train
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes_lt", name))
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
    classes = [{a["category_id"] for a in d["annotations"]} for d in dicts]
    rare = torch.tensor([any(freq[c] == "r" for c in cs) for cs in classes])
    only_frequent = torch.tensor([bool(cs) and all(freq[c] == "f" for c in cs) for cs in classes])
    assert rare.any() and only_frequent.any()
    assert (factors[rare] > 1).all()
    assert (factors[only_frequent] == 1).all()
    assert factors.max() > 2
