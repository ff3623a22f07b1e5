"""A ResNet-18 (GroupNorm) pretrained by image classification on rendered shapes.

The papers' models start from an ImageNet-pretrained backbone; the `shapes` configs cannot
download one. This module makes the counterpart here: the `shapes` configs' ResNet-18 (Detectron2
``ResNet``, ``MODEL.RESNETS``: depth 18, 64 res2 channels, GroupNorm, stride in the 3x3 conv,
BGR input with the configs' pixel mean / std) trained to classify single objects rendered by the
shapes generator (:mod:`rsloss_d2.data.synthetic`: its forms, colours and textures on its
low-frequency noisy backgrounds, occluded distractors around them). The classes are every
distinct (form, colour, texture) of ``shapes`` and ``shapes_lt`` (42). The images are drawn from
their own random stream (split ``"pretrain"``), so no ``shapes_val`` / ``shapes_lt_val`` image
is ever seen.

The weights are saved in Detectron2's model-zoo ``.pkl`` format with the names Detectron2's
ResNet has inside an FPN (``backbone.bottom_up.stem.*``, ``backbone.bottom_up.res2.*`` ...), the
names of every family's backbone here (R-CNN, RankingRetinaNet, SOLOv2, YOLACT, GOL). Importing
``rsloss_d2`` registers an iopath handler, so a config says::

    MODEL:
      WEIGHTS: "rsloss_d2://ShapesPretrained/R-18-GN.pkl"

as it would say ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``. Resolving the URL makes the
file on first use (a few minutes on 2 CPU cores) and caches it under
``$DETECTRON2_DATASETS/pretrained/`` (default ``datasets/pretrained/``), next to the synthetic
datasets: written to a temporary file and renamed, with a manifest holding its SHA-256 and the
settings it was made with; a missing, partial or corrupt file, or one made with other settings,
is remade. Concurrent processes wait for one another (file lock). Command line::

    python tools/pretrain_backbone.py            # make (or check) the cached file
    python tools/pretrain_backbone.py --force    # remake it
"""
import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import pickle
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler
from torch import nn

from .data import synthetic
from .data.synthetic import datasets_root

__all__ = [
    "PRETRAINED_URL",
    "DEFAULT_SETTINGS",
    "RESNET_SETTINGS",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PRETRAIN_CLASSES",
    "build_shapes_resnet",
    "render_batch",
    "train_backbone",
    "ensure_pretrained",
    "pretrained_dir",
    "register_handler",
    "main",
]

logger = logging.getLogger(__name__)

PREFIX = "rsloss_d2://"
NAME = "ShapesPretrained/R-18-GN.pkl"
PRETRAINED_URL = PREFIX + NAME
FORMAT_VERSION = 1

# MODEL.RESNETS of every `shapes` / `shapes_lt` config (a test compares them).
RESNET_SETTINGS = {"DEPTH": 18, "RES2_OUT_CHANNELS": 64, "NORM": "GN", "STRIDE_IN_1X1": False,
                   "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64}
# BGR, the configs' MODEL.PIXEL_MEAN / PIXEL_STD.
PIXEL_MEAN = (103.53, 116.28, 123.675)
PIXEL_STD = (57.375, 57.12, 58.395)

# Every distinct (form, BGR colour, texture) of both generators, in a fixed order.
PRETRAIN_CLASSES = list(dict.fromkeys(
    (c["form"], tuple(c["color"]), c["texture"])
    for c in synthetic.SHAPES_CATEGORIES + synthetic.SHAPES_LT_CATEGORIES))

# What the cached file is made with (ensure_pretrained remakes it when these change).
DEFAULT_SETTINGS = {
    "image_size": 48,     # crops of 48 px: objects of half-extent 4-30 px, as small / medium ones
    "batch_size": 32,
    "steps": 600,
    "lr": 0.1,            # SGD momentum 0.9, linear warm-up, cosine decay to 0
    "warmup_steps": 50,
    "weight_decay": 5e-5,
    "seed": 0,
}


def pretrained_dir():
    """``$DETECTRON2_DATASETS/pretrained`` (default ``datasets/pretrained``)."""
    return os.path.join(datasets_root(), "pretrained")


def build_shapes_resnet():
    """The `shapes` configs' ResNet-18 (GN) as Detectron2 builds it, returning ``res5`` only."""
    cfg = get_cfg()
    for k, v in RESNET_SETTINGS.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


class _Classifier(nn.Module):
    """ResNet -> global average pool of res5 -> linear layer over the classes."""

    def __init__(self, num_classes):
        super().__init__()
        self.bottom_up = build_shapes_resnet()
        self.fc = nn.Linear(self.bottom_up.output_shape()["res5"].channels, num_classes)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)

    def forward(self, images):
        """images: (N, 3, H, W) float BGR in [0, 255] -> (N, num_classes) logits."""
        x = self.bottom_up((images - self.mean) / self.std)["res5"]
        return self.fc(x.mean(dim=(2, 3)))


def _background(size, rng):
    """The generator's background statistics (coarse colour gradient + pixel noise) as seen in a
    ``size`` crop of a 256-px image: (size, size, 3) uint8."""
    coarse = rng.uniform(60, 150, size=(2, 2, 3)).astype(np.float32)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _draw(img, form, color, texture, radius, centre, rng):
    """Fill one shape of the generator into ``img`` (in place)."""
    size = img.shape[0]
    poly = synthetic._polygon(form, radius, rng) + centre
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    tex = synthetic._texture(texture, color, size, size, rng)
    img[m > 0] = tex[m > 0]


def render_batch(seed, start, count, size):
    """Images ``start .. start + count - 1`` of the pretraining stream.

    Each image is a crop-sized render: the generator's background, 0-2 distractor shapes, then
    the labelled shape on top (half-extent log-uniform in [size/13, size/1.6], centre in the
    middle 40 %, so it may be cut by the border and may hide distractors). Deterministic in
    ``(seed, index)``; the random stream is the generator's per-image stream of split
    ``"pretrain"`` (no image of another split is reproduced).

    Returns (count, 3, size, size) float32 BGR in [0, 255] and (count,) int64 labels.
    """
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    lo, hi = math.log(size / 13.0), math.log(size / 1.6)
    for i in range(count):
        rng = synthetic._rng(seed, "pretrain", start + i)
        label = int(rng.integers(len(PRETRAIN_CLASSES)))
        img = _background(size, rng)
        radius = float(np.exp(rng.uniform(lo, hi)))
        for _ in range(int(rng.integers(0, 3))):
            form, color, texture = PRETRAIN_CLASSES[int(rng.integers(len(PRETRAIN_CLASSES)))]
            _draw(img, form, color, texture, radius * rng.uniform(0.3, 0.8),
                  rng.uniform(0, size, size=2), rng)
        form, color, texture = PRETRAIN_CLASSES[label]
        _draw(img, form, color, texture, radius, rng.uniform(0.3 * size, 0.7 * size, size=2), rng)
        images[i] = img
        labels[i] = label
    return torch.from_numpy(images).permute(0, 3, 1, 2).float(), torch.from_numpy(labels)


def train_backbone(settings=None, log_every=100):
    """Train the classifier; returns ({parameter name: float32 ndarray} of the ResNet with the
    ``backbone.bottom_up.`` prefix, summary dict with accuracy and seconds)."""
    s = dict(DEFAULT_SETTINGS, **(settings or {}))
    torch.manual_seed(s["seed"])
    model = _Classifier(len(PRETRAIN_CLASSES))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)  # no decay on GN affine and biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": s["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}], lr=s["lr"], momentum=0.9)
    steps, warm = int(s["steps"]), int(s["warmup_steps"])

    def lr_at(it):
        if it < warm:
            return s["lr"] * (it + 1) / warm
        return 0.5 * s["lr"] * (1 + math.cos(math.pi * (it - warm) / max(steps - warm, 1)))

    start_time = time.perf_counter()
    model.train()
    correct = seen = 0
    for it in range(steps):
        images, labels = render_batch(s["seed"], it * s["batch_size"], s["batch_size"],
                                      s["image_size"])
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it >= steps - max(steps // 10, 1):  # training accuracy over the last 10 % of steps
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.numel()
        if log_every and (it + 1) % log_every == 0:
            logger.info(f"shapes pretraining: step {it + 1}/{steps}, loss {loss.item():.3f}, "
                        f"{time.perf_counter() - start_time:.0f} s")
    seconds = time.perf_counter() - start_time
    model.eval()
    with torch.no_grad():  # held-out images of the same stream (indices past the training ones)
        images, labels = render_batch(s["seed"], steps * s["batch_size"], 512, s["image_size"])
        held_out = float((model(images).argmax(1) == labels).float().mean())
    weights = {"backbone.bottom_up." + k: v.detach().numpy().astype(np.float32).copy()
               for k, v in model.bottom_up.state_dict().items()}
    summary = {"train_seconds": round(seconds, 1), "final_train_accuracy": correct / max(seen, 1),
               "held_out_accuracy": held_out, "num_classes": len(PRETRAIN_CLASSES),
               "torch_threads": torch.get_num_threads()}
    return weights, summary


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_path(path):
    return path + ".json"


def _is_valid(path, settings):
    """True if ``path`` and its manifest exist, the settings match and the SHA-256 agrees."""
    mpath = _manifest_path(path)
    if not (os.path.isfile(path) and os.path.isfile(mpath)):
        return False
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("settings") == settings
            and manifest.get("sha256") == _sha256(path))


@contextlib.contextmanager
def _lock(path):
    """Exclusive lock on ``path + '.lock'`` (so concurrent first uses train only once)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no locking
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_pretrained(root=None, settings=None, force=False):
    """Path of the cached weights under ``root`` (default :func:`pretrained_dir`), made first if
    missing, partial, corrupt, made with other settings, or ``force``."""
    root = root or pretrained_dir()
    s = dict(DEFAULT_SETTINGS, **(settings or {}))
    path = os.path.join(root, os.path.basename(NAME))
    if not force and _is_valid(path, s):
        return path
    os.makedirs(root, exist_ok=True)
    with _lock(path):
        if not force and _is_valid(path, s):  # another process made it while we waited
            return path
        logger.info(f"Making {path}: ResNet-18 (GN) classification pretraining on rendered "
                    f"shapes ({s['steps']} steps of {s['batch_size']} images at "
                    f"{s['image_size']} px); cached for later runs")
        weights, summary = train_backbone(s)
        data = {"model": weights, "__author__": "rsloss_d2 shapes pretraining",
                "matching_heuristics": False}
        synthetic._replace_atomically(path, lambda f: pickle.dump(data, f, protocol=4))
        manifest = {"format_version": FORMAT_VERSION, "settings": s, "sha256": _sha256(path),
                    "classes": ["/".join(map(str, c)) for c in PRETRAIN_CLASSES], **summary}
        synthetic._replace_atomically(
            _manifest_path(path), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        logger.info(f"Made {path} in {summary['train_seconds']} s "
                    f"(held-out accuracy {summary['held_out_accuracy']:.3f})")
    return path


class ShapesPretrainedHandler(PathHandler):
    """iopath handler of ``rsloss_d2://ShapesPretrained/R-18-GN.pkl``: the local cached file,
    made by :func:`ensure_pretrained` with ``DEFAULT_SETTINGS`` if needed."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path, **kwargs):
        name = path[len(PREFIX):]
        if name != NAME:
            raise FileNotFoundError(f"{path}: unknown; available: {PRETRAINED_URL}")
        return ensure_pretrained(settings=copy.deepcopy(DEFAULT_SETTINGS))

    def _open(self, path, mode="r", **kwargs):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _exists(self, path, **kwargs):
        return path[len(PREFIX):] == NAME

    def _isfile(self, path, **kwargs):
        return self._exists(path)


_registered = False


def register_handler():
    """Register the ``rsloss_d2://`` handler with Detectron2's PathManager (once; importing
    ``rsloss_d2`` calls this)."""
    global _registered
    if not _registered:
        PathManager.register_handler(ShapesPretrainedHandler())
        _registered = True


def main(argv=None):
    p = argparse.ArgumentParser(description="Make the shapes-pretrained ResNet-18 (GN) backbone "
                                            f"({PRETRAINED_URL}) if it is not cached yet.")
    p.add_argument("--root", default=None, help="cache folder (default: "
                                                "$DETECTRON2_DATASETS/pretrained or datasets/pretrained)")
    p.add_argument("--force", action="store_true", help="remake even if a valid file is cached")
    p.add_argument("--steps", type=int, default=None, help="training steps (changes the settings)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = {} if args.steps is None else {"steps": args.steps}
    start = time.perf_counter()
    path = ensure_pretrained(args.root, settings, force=args.force)
    with open(_manifest_path(path)) as f:
        manifest = json.load(f)
    print(f"{path} (sha256 {manifest['sha256'][:12]}..., held-out accuracy "
          f"{manifest['held_out_accuracy']:.3f}, made in {manifest['train_seconds']} s with "
          f"{manifest['torch_threads']} threads; this call {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
