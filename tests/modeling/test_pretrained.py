"""The shapes-pretrained ResNet-18 (GN): made once, cached, checked, loadable by every family.

One small pretraining (a few steps at 32 px) is made per test module into a temporary cache and
shared by the tests; ``DEFAULT_SETTINGS`` is set to those small settings for the ``rsloss_d2://``
URL, so Detectron2's checkpointer resolves the URL to that cache.
"""
import glob
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from rsloss_d2 import add_rsloss_config
from rsloss_d2 import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(pretrained.DEFAULT_SETTINGS, image_size=32, batch_size=4, steps=3, warmup_steps=1)
# one config per family's backbone builder / meta-architecture
FAMILY_CONFIGS = [
    "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml",   # GeneralizedRCNN + FPN (P2-P6)
    "configs/shapes/retinanet_R_18_FPN_quick.yaml",        # Detectron2 RetinaNet, P3-P7
    "configs/shapes/rs_atss_R_18_FPN_quick.yaml",          # RankingRetinaNet, P6 from P5
    "configs/shapes/solov2_R_18_FPN_quick.yaml",           # SOLOv2
    "configs/shapes/rs_yolact_R_18_quick.yaml",            # YOLACT's FPN
    "configs/shapes_lt/gol_mask_rcnn_R_18_FPN_rfs.yaml",   # GOL (shapes_lt)
]
SHAPES_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for pattern in ("configs/shapes/*.yaml", "configs/shapes_lt/*.yaml")
    for p in glob.glob(os.path.join(REPO, pattern)))


class _CountingTrainer:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Small pretraining made once into $DETECTRON2_DATASETS/pretrained of a temporary root."""
    root = str(tmp_path_factory.mktemp("datasets"))
    counter = _CountingTrainer(pretrained.train_backbone)
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECTRON2_DATASETS", root)
    mp.setattr(pretrained, "DEFAULT_SETTINGS", SMALL)
    mp.setattr(pretrained, "train_backbone", counter)
    path = pretrained.ensure_pretrained()
    yield {"root": root, "path": path, "counter": counter}
    mp.undo()


def load_cfg(path):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_backbone_settings_are_those_of_every_shapes_config():
    assert len(SHAPES_CONFIGS) > 20
    for path in SHAPES_CONFIGS:
        cfg = load_cfg(path)
        for key, value in pretrained.RESNET_SETTINGS.items():
            assert getattr(cfg.MODEL.RESNETS, key) == value, (path, key)
        assert tuple(cfg.MODEL.PIXEL_MEAN) == pretrained.PIXEL_MEAN, path
        assert tuple(cfg.MODEL.PIXEL_STD) == pretrained.PIXEL_STD, path
        assert cfg.INPUT.FORMAT == "BGR", path


def test_made_once_in_the_datasets_root(cache):
    assert cache["counter"].calls == 1
    assert cache["path"] == os.path.join(cache["root"], "pretrained", "R-18-GN.pkl")
    with open(cache["path"] + ".json") as f:
        manifest = json.load(f)
    assert manifest["settings"] == SMALL and len(manifest["sha256"]) == 64
    with open(cache["path"], "rb") as f:
        data = pickle.load(f)
    keys = set(data["model"])
    expected = {"backbone.bottom_up." + k for k in pretrained.build_shapes_resnet().state_dict()}
    assert keys == expected and any(k.endswith("res5.1.conv2.norm.weight") for k in keys)
    assert not [n for n in os.listdir(os.path.dirname(cache["path"])) if n.endswith(".tmp")]


def test_second_call_and_url_do_not_retrain(cache):
    mtime = os.path.getmtime(cache["path"])
    assert pretrained.ensure_pretrained() == cache["path"]
    assert PathManager.get_local_path(pretrained.PRETRAINED_URL) == cache["path"]
    assert cache["counter"].calls == 1 and os.path.getmtime(cache["path"]) == mtime


def test_other_settings_remake(cache, tmp_path):
    root = str(tmp_path / "pretrained")
    shutil.copytree(os.path.dirname(cache["path"]), root)
    before = cache["counter"].calls
    pretrained.ensure_pretrained(root, dict(SMALL, steps=2))
    assert cache["counter"].calls == before + 1


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "no_manifest", "garbled_manifest"])
def test_partial_or_corrupt_cache_is_detected_and_remade(cache, tmp_path, damage):
    root = str(tmp_path / "pretrained")
    shutil.copytree(os.path.dirname(cache["path"]), root)
    path = os.path.join(root, "R-18-GN.pkl")
    good = open(path, "rb").read()
    if damage == "truncated":  # a partial write
        with open(path, "wb") as f:
            f.write(good[: len(good) // 2])
    elif damage == "flipped_byte":  # same size, one byte of a weight changed
        blob = bytearray(good)
        blob[len(blob) * 2 // 3] ^= 0xFF
        with open(path, "wb") as f:
            f.write(bytes(blob))
    elif damage == "no_manifest":  # stopped between the weights and the manifest
        os.remove(path + ".json")
    else:
        with open(path + ".json", "w") as f:
            f.write('{"sha256": ')
    before = cache["counter"].calls
    assert pretrained.ensure_pretrained(root, SMALL) == path
    assert cache["counter"].calls == before + 1
    assert pretrained._is_valid(path, SMALL)
    with open(path, "rb") as f:  # a complete checkpoint again
        assert set(pickle.load(f)["model"]) == set(pickle.loads(good)["model"])
    assert pretrained.ensure_pretrained(root, SMALL) == path
    assert cache["counter"].calls == before + 1


@pytest.mark.parametrize("config", FAMILY_CONFIGS)
def test_url_loads_into_every_family_backbone(cache, config):
    cfg = load_cfg(config)
    cfg.MODEL.WEIGHTS = pretrained.PRETRAINED_URL
    calls = cache["counter"].calls
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    checkpointer._parsed_url_during_load = None
    local = PathManager.get_local_path(cfg.MODEL.WEIGHTS)
    incompatible = checkpointer._load_model(checkpointer._load_file(local))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    # the same through Detectron2's public path (the trainer's resume_or_load)
    model2 = build_model(cfg)
    DetectionCheckpointer(model2).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    with open(cache["path"], "rb") as f:
        weights = pickle.load(f)["model"]
    state = model2.state_dict()
    for name, value in weights.items():
        assert np.array_equal(state[name].numpy(), value), name
    assert cache["counter"].calls == calls  # loading never retrains a valid file


def test_unknown_name_is_an_error():
    with pytest.raises(FileNotFoundError):
        PathManager.get_local_path("rsloss_d2://ShapesPretrained/R-50.pkl")


def test_render_batch_is_deterministic_and_labelled():
    a, la = pretrained.render_batch(0, 10, 6, 32)
    b, lb = pretrained.render_batch(0, 10, 6, 32)
    c, _ = pretrained.render_batch(0, 16, 6, 32)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert 0 <= int(la.min()) and int(la.max()) < len(pretrained.PRETRAIN_CLASSES)
    # every (form, colour, texture) of both generators, once
    assert len(pretrained.PRETRAIN_CLASSES) == len(set(pretrained.PRETRAIN_CLASSES)) == 42
    _, labels = pretrained.render_batch(0, 0, 400, 16)
    assert len(set(labels.tolist())) == 42


def test_command_line(tmp_path, capsys):
    pretrained.main(["--root", str(tmp_path), "--steps", "1"])
    out = capsys.readouterr().out
    assert os.path.join(str(tmp_path), "R-18-GN.pkl") in out and "held-out accuracy" in out
    with open(os.path.join(str(tmp_path), "R-18-GN.pkl.json")) as f:
        assert json.load(f)["settings"]["steps"] == 1
