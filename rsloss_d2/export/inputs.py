"""Input images of an exported model, prepared as Detectron2's ``tools/deploy/export_model.py``
prepares its sample: read in ``cfg.INPUT.FORMAT``, resized by ``ResizeShortestEdge`` with the
test sizes (as ``DefaultPredictor``), a float32 (3, H, W) tensor of raw pixels."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["test_resize", "image_tensor", "read_image_tensor"]


def test_resize(cfg):
    """The test-time resize of ``cfg`` (None when ``INPUT.MIN_SIZE_TEST`` is 0: YOLACT resizes
    inside the model)."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        return None
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)


def image_tensor(cfg, image: np.ndarray) -> torch.Tensor:
    """(H0, W0, 3) uint8 image in ``cfg.INPUT.FORMAT`` → (3, H, W) float32, resized."""
    resize = test_resize(cfg)
    if resize is not None:
        image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def read_image_tensor(cfg, path: str) -> torch.Tensor:
    """:func:`image_tensor` of the image file ``path``."""
    return image_tensor(cfg, utils.read_image(path, format=cfg.INPUT.FORMAT))
