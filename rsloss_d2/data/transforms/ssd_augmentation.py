"""SSD-style training augmentation as Detectron2 `Augmentation`s / `Transform`s.

The pipeline of the official YOLACT / RS-YOLACT and aLRP-500 configs (``PhotoMetricDistortion``,
``Expand``, ``MinIoURandomCrop``, ``Resize`` without keep-ratio, from
``mmdet/datasets/pipelines/transforms.py`` of mmdetection 2.x): every op is a Detectron2
``Transform`` so that images, boxes and instance masks go through the same geometry
(``apply_image`` / ``apply_box`` / ``apply_segmentation``). :class:`SSDDatasetMapper` in ``mapper.py`` strings them together.

Departures from mmdet, on purpose:
* ``MinIoURandomCrop`` draws the crop's left/top uniformly in ``[0, w − new_w]``; mmdet calls
  ``np.random.uniform(w − new_w)``, i.e. *low* = w − new_w, high = 1, a slip that samples in
  ``(1, w − new_w]``. The intended range is used here.
* Boxes can be recomputed from the transformed masks (``RECOMPUTE_BOXES``), see the mapper.
"""
from typing import Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, NoOpTransform, Transform

__all__ = [
    "PhotometricDistortTransform",
    "RandomPhotometricDistortion",
    "ExpandTransform",
    "RandomExpand",
    "MinIoURandomCrop",
    "CV2ResizeTransform",
    "FixedSizeResize",
]


class PhotometricDistortTransform(Transform):
    """mmdet ``PhotoMetricDistortion`` with fixed (already sampled) parameters.

    Order: brightness (+delta), contrast (×alpha) first if ``contrast_first``, saturation (×) and
    hue (+degrees, wrapped to [0, 360)) in HSV space, contrast last otherwise, channel permutation.
    Works in float32 without clipping (as mmdet). Geometry is unchanged.
    """

    def __init__(self, brightness: float, contrast: float, contrast_first: bool,
                 saturation: float, hue: float, permutation: Sequence[int], image_format: str):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        img = img.astype(np.float32, copy=True)
        if self.image_format not in ("BGR", "RGB") or img.ndim != 3 or img.shape[2] != 3:
            return img  # HSV needs colour images; other formats only get no-op geometry
        img += self.brightness
        if self.contrast_first:
            img *= self.contrast
        if self.saturation != 1.0 or self.hue != 0.0:
            to_hsv = cv2.COLOR_BGR2HSV if self.image_format == "BGR" else cv2.COLOR_RGB2HSV
            from_hsv = cv2.COLOR_HSV2BGR if self.image_format == "BGR" else cv2.COLOR_HSV2RGB
            hsv = cv2.cvtColor(img, to_hsv)
            hsv[..., 1] *= self.saturation
            hsv[..., 0] = np.mod(hsv[..., 0] + self.hue, 360.0)
            img = cv2.cvtColor(hsv, from_hsv)
        if not self.contrast_first:
            img *= self.contrast
        return np.ascontiguousarray(img[..., list(self.permutation)])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class RandomPhotometricDistortion(T.Augmentation):
    """Samples :class:`PhotometricDistortTransform` like mmdet: each op with probability 0.5
    (brightness ±``brightness_delta``, contrast, saturation, hue ±``hue_delta`` degrees, channel
    swap), contrast before or after the HSV ops with probability 0.5."""

    def __init__(self, brightness_delta: float = 32.0,
                 contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0,
                 image_format: str = "BGR"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        rand = np.random
        brightness = rand.uniform(-self.brightness_delta, self.brightness_delta) \
            if rand.randint(2) else 0.0
        contrast_first = bool(rand.randint(2))
        contrast = rand.uniform(*self.contrast_range) if rand.randint(2) else 1.0
        saturation = rand.uniform(*self.saturation_range) if rand.randint(2) else 1.0
        hue = rand.uniform(-self.hue_delta, self.hue_delta) if rand.randint(2) else 0.0
        perm = rand.permutation(3).tolist() if rand.randint(2) else [0, 1, 2]
        return PhotometricDistortTransform(brightness, contrast, contrast_first, saturation, hue,
                                           perm, self.image_format)


class ExpandTransform(Transform):
    """Place the (h, w) image at (left, top) of a (new_h, new_w) canvas filled with ``fill``
    (mmdet ``Expand``); masks are padded with 0, coordinates shifted by (left, top)."""

    def __init__(self, left: int, top: int, new_w: int, new_h: int, fill: Sequence[float]):
        super().__init__()
        self._set_attributes(locals())

    def _pad(self, img: np.ndarray, fill) -> np.ndarray:
        h, w = img.shape[:2]
        out = np.empty((self.new_h, self.new_w) + img.shape[2:], dtype=img.dtype)
        out[...] = np.asarray(fill, dtype=img.dtype)
        out[self.top:self.top + h, self.left:self.left + w] = img
        return out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        fill = self.fill if img.ndim == 3 and img.shape[2] == len(self.fill) else self.fill[0]
        return self._pad(img, fill)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = coords.copy()
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._pad(segmentation, 0)


class RandomExpand(T.Augmentation):
    """mmdet ``Expand``: with probability ``prob``, ratio ~ U(ratio_range), canvas
    ``(int(h·ratio), int(w·ratio))``, offsets ``int(U(0, w·ratio − w))``,
    ``int(U(0, h·ratio − h))``."""

    def __init__(self, fill: Sequence[float], ratio_range: Tuple[float, float] = (1.0, 4.0),
                 prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if np.random.uniform(0, 1) > self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        left = int(np.random.uniform(0, w * ratio - w))
        top = int(np.random.uniform(0, h * ratio - h))
        return ExpandTransform(left, top, int(w * ratio), int(h * ratio), tuple(self.fill))


def _iou_patch_boxes(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY patch with each of (N, 4) boxes (mmdet ``bbox_overlaps``, eps 1e-6)."""
    lt = np.maximum(patch[:2], boxes[:, :2])
    rb = np.minimum(patch[2:], boxes[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (patch[2] - patch[0]) * (patch[3] - patch[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area_p + area_b - inter, 1e-6)


def centers_inside(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """(N,) bool: box centre strictly inside the rectangle (mmdet
    ``is_center_of_bboxes_in_patch``)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    return (c[:, 0] > x0) & (c[:, 1] > y0) & (c[:, 0] < x1) & (c[:, 1] < y1)


class MinIoURandomCrop(T.Augmentation):
    """mmdet ``MinIoURandomCrop``: sample a mode from {no crop, *min_ious, 0}; for a min-IoU mode
    try ``max_trials`` crops (side ≥ ``min_crop_size`` × image side, h/w within
    ``aspect_range``, integer corners, not degenerate) whose IoU with every GT box is ≥ the mode
    and which contain at least one GT centre; after ``max_trials`` failures sample a new mode (as
    mmdet's ``while True``: "no crop" ends it). An image without boxes accepts any crop.

    The GTs whose centre falls outside the crop are dropped by the mapper (it drops every GT whose
    transformed centre leaves the final image, which is the same set), so a crop never removes
    every object of an image that has objects.
    """

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 min_crop_size: float = 0.3, aspect_range: Tuple[float, float] = (0.5, 2.0),
                 max_trials: int = 50):
        super().__init__()
        self._init(locals())
        self.modes = (1.0, *min_ious, 0.0)

    def get_transform(self, image, boxes):
        h, w = image.shape[:2]
        boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes).reshape(-1, 4)
        while True:
            mode = self.modes[np.random.randint(len(self.modes))]
            if mode == 1.0:
                return NoOpTransform()
            for _ in range(self.max_trials):
                new_w = np.random.uniform(self.min_crop_size * w, w)
                new_h = np.random.uniform(self.min_crop_size * h, h)
                if not self.aspect_range[0] <= new_h / new_w <= self.aspect_range[1]:
                    continue
                left = np.random.uniform(0, w - new_w)
                top = np.random.uniform(0, h - new_h)
                patch = np.array([int(left), int(top), int(left + new_w), int(top + new_h)])
                if patch[2] == patch[0] or patch[3] == patch[1]:
                    continue
                if len(boxes):
                    if _iou_patch_boxes(patch, boxes).min() < mode:
                        continue
                    if not centers_inside(boxes, *patch).any():
                        continue
                return CropTransform(int(patch[0]), int(patch[1]), int(patch[2] - patch[0]),
                                     int(patch[3] - patch[1]))


class CV2ResizeTransform(T.ResizeTransform):
    """Detectron2 ``ResizeTransform`` computed with OpenCV as mmcv ``imresize``: bilinear for the
    image (any dtype, any number of channels), nearest for masks (any number of channels)."""

    def _resize(self, img: np.ndarray, interp: int) -> np.ndarray:
        size = (self.new_w, self.new_h)
        if img.ndim == 3 and img.shape[2] > 512:  # OpenCV's channel limit
            return np.concatenate([self._resize(img[..., i:i + 512], interp)
                                   for i in range(0, img.shape[2], 512)], axis=2)
        out = cv2.resize(img, size, interpolation=interp)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel
            out = out[..., None]
        return out

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        if img.shape[0] == self.new_h and img.shape[1] == self.new_w:
            return img
        return self._resize(img, cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.shape[0] == self.new_h and segmentation.shape[1] == self.new_w:
            return segmentation
        return self._resize(segmentation, cv2.INTER_NEAREST)


class FixedSizeResize(T.Augmentation):
    """Resize to a fixed (height, width), no keep-ratio (mmdet ``Resize(keep_ratio=False)``)."""

    def __init__(self, size: Tuple[int, int]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        return CV2ResizeTransform(h, w, int(self.size[0]), int(self.size[1]))
