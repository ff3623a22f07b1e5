"""Weights that leave modules of the model unloaded stop the run with the modules named, unless
that is expected (MODEL.WEIGHTS_ALLOW_UNLOADED, or a backbone-only file when training)."""
import os
import re

import pytest
import torch
from detectron2.modeling import build_model

from rsloss_d2 import engine
from rsloss_d2.engine import CheckedCheckpointer, WeightsMismatchError, check_loaded_weights

from conftest import QUICK_CONFIG, REPO

ATSS_CONFIG = os.path.join(REPO, "configs", "shapes", "rs_atss_R_18_FPN_quick.yaml")


def _model(config, opts=()):
    cfg = engine.load_config(config, list(opts) + ["MODEL.DEVICE", "cpu"])
    return build_model(cfg)


def _load(model, path):
    """fvcore's incompatible keys of loading `path` into `model` (Detectron2's loading)."""
    checkpointer = CheckedCheckpointer(model)
    checkpointer.load(path)
    return checkpointer.incompatible


def _missing_modules(message):
    """The module names the error lists as missing from the file."""
    listed = message.split("missing from the file: ")[1]
    return re.split(r"[;)]", listed)[0].split(", ")


@pytest.fixture(scope="module")
def mask_rcnn_weights(tmp_path_factory):
    """The state of an RS-Mask R-CNN of the main job's config (8 classes), saved as a file."""
    path = str(tmp_path_factory.mktemp("weights") / "rs_mask_rcnn.pth")
    torch.save({"model": _model(QUICK_CONFIG).state_dict()}, path)
    return path


def test_weights_of_the_same_model_fit(mask_rcnn_weights):
    model = _model(QUICK_CONFIG)
    incompatible = _load(model, mask_rcnn_weights)
    assert check_loaded_weights(model, incompatible, mask_rcnn_weights, eval_only=True) == []


def test_weights_of_another_architecture_name_the_unloaded_heads(mask_rcnn_weights):
    """RS-Mask R-CNN weights into RS-ATSS: the backbone loads, the dense head does not."""
    model = _model(ATSS_CONFIG)
    incompatible = _load(model, mask_rcnn_weights)
    for eval_only in (True, False):  # not a backbone-only file: an error when training too
        with pytest.raises(WeightsMismatchError) as e:
            check_loaded_weights(model, incompatible, mask_rcnn_weights, eval_only=eval_only)
        msg = str(e.value)
        assert msg.startswith(f"The weights {mask_rcnn_weights} do not fit the model:"), msg
        assert _missing_modules(msg) == ["backbone.top_block", "head"], msg  # P6/P7, head
        assert "MODEL.WEIGHTS_ALLOW_UNLOADED \"['backbone.top_block', 'head']\"" in msg


def test_weights_of_another_number_of_classes_name_the_predictors(mask_rcnn_weights):
    model = _model(QUICK_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    incompatible = _load(model, mask_rcnn_weights)
    with pytest.raises(WeightsMismatchError) as e:
        check_loaded_weights(model, incompatible, mask_rcnn_weights, eval_only=True)
    msg = str(e.value)
    # class-specific layers (sigmoid classifier: one row per class): 8 in the file, 3 here
    assert "of another shape: roi_heads.box_predictor.bbox_pred.bias [32] in the file vs [12]" \
        in msg
    assert "roi_heads.box_predictor.cls_score.weight [8, 256] in the file vs [3, 256]" in msg
    assert "roi_heads.mask_head.predictor.weight [8, 64, 1, 1] in the file vs [3, 64, 1, 1]" \
        in msg
    suggestion = msg.split("MODEL.WEIGHTS_ALLOW_UNLOADED ")[1].strip('".')
    allowed = [s.strip(" '") for s in suggestion.strip("[]").split(",")]
    assert "roi_heads.mask_head.predictor" in allowed
    assert not any(a.startswith("backbone") for a in allowed)
    # fine-tuning to other classes, said so: the suggested key lets it pass, and nothing else
    assert set(check_loaded_weights(model, incompatible, mask_rcnn_weights, allowed)) == \
        set(allowed)
    with pytest.raises(WeightsMismatchError):
        check_loaded_weights(model, incompatible, mask_rcnn_weights, allowed[1:])
    assert check_loaded_weights(model, incompatible, mask_rcnn_weights, ["*"], eval_only=True)


def test_backbone_only_weights_start_training_but_are_not_evaluated(mask_rcnn_weights,
                                                                    tmp_path):
    state = torch.load(mask_rcnn_weights)["model"]
    backbone = str(tmp_path / "backbone.pth")
    torch.save({"model": {k: v for k, v in state.items()
                          if k.startswith("backbone.bottom_up.")}}, backbone)
    model = _model(QUICK_CONFIG)
    incompatible = _load(model, backbone)
    fresh = check_loaded_weights(model, incompatible, backbone, eval_only=False)
    assert "roi_heads" in fresh and "proposal_generator" in fresh
    assert not any(m.startswith("backbone.bottom_up") for m in fresh)
    with pytest.raises(WeightsMismatchError) as e:
        check_loaded_weights(model, incompatible, backbone, eval_only=True)
    assert {"roi_heads", "proposal_generator"} <= set(_missing_modules(str(e.value)))
    # a backbone file that does not fill the whole bottom-up network is not a pretrained start
    partial = str(tmp_path / "partial.pth")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.bottom_up.")
                          and ".res5." not in k}}, partial)
    incompatible = _load(model, partial)
    with pytest.raises(WeightsMismatchError) as e:
        check_loaded_weights(model, incompatible, partial, eval_only=False)
    assert _missing_modules(str(e.value)) == ["backbone.bottom_up.res5"]


def test_eval_only_with_weights_of_another_architecture_stops(mask_rcnn_weights, tmp_path,
                                                              monkeypatch):
    """The issue's case end to end in-process: --eval-only of RS-ATSS with RS-Mask R-CNN
    weights stops before evaluating anything."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets"))
    args = engine.argument_parser().parse_args([
        "--config-file", ATSS_CONFIG, "--eval-only", "MODEL.WEIGHTS", mask_rcnn_weights,
        "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"])
    with pytest.raises(WeightsMismatchError) as e:
        engine.train_or_evaluate(args)
    assert "head" in _missing_modules(str(e.value))
    assert not os.path.exists(tmp_path / "out" / "inference")


def test_training_with_weights_of_another_architecture_stops(mask_rcnn_weights, tmp_path,
                                                             monkeypatch):
    """The trainer's load (fine-tuning from MODEL.WEIGHTS) is checked too."""
    from rsloss_d2.data.synthetic import generate_all

    root = str(tmp_path / "datasets")
    generate_all(root, num_train=4, num_val=2, image_size=96, seed=0, progress=False,
                 which=("shapes",))
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    cfg = engine.load_config(ATSS_CONFIG, [
        "MODEL.WEIGHTS", mask_rcnn_weights, "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"])
    trainer = engine.Trainer(cfg)
    with pytest.raises(WeightsMismatchError) as e:
        trainer.resume_or_load(resume=False)
    assert "head" in _missing_modules(str(e.value))


def test_model_zoo_backbone_pkl_is_a_pretrained_start(mask_rcnn_weights, tmp_path):
    """A Detectron2 model-zoo `.pkl` holding `backbone.bottom_up.*` numpy arrays (the format of
    `rsloss_d2://ShapesPretrained/R-18-GN.pkl`) starts training; evaluating it does not."""
    import pickle

    state = torch.load(mask_rcnn_weights)["model"]
    path = str(tmp_path / "R-18-GN.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()
                               if k.startswith("backbone.bottom_up.")},
                     "__author__": "test", "matching_heuristics": False}, f)
    model = _model(QUICK_CONFIG)
    incompatible = _load(model, path)
    fresh = check_loaded_weights(model, incompatible, path, eval_only=False)
    assert {"roi_heads", "proposal_generator"} <= set(fresh)
    with pytest.raises(WeightsMismatchError):
        check_loaded_weights(model, incompatible, path, eval_only=True)
