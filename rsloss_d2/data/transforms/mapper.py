"""Training dataset mapper with the SSD-style augmentation (``INPUT.SSD_AUGMENTATION.*``).

Use it from a trainer with ``build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))``;
``build_train_mapper`` returns Detectron2's ``DatasetMapper`` when the augmentation is disabled.
"""
import copy
import logging
from typing import List, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

from .ssd_augmentation import (
    FixedSizeResize,
    MinIoURandomCrop,
    RandomExpand,
    RandomPhotometricDistortion,
    centers_inside,
)

__all__ = ["SSDDatasetMapper", "build_ssd_augmentation", "build_train_mapper"]

logger = logging.getLogger(__name__)


def build_ssd_augmentation(cfg) -> List[T.Augmentation]:
    """The augmentation list of ``INPUT.SSD_AUGMENTATION``: photometric distortion, expand
    (filled with ``MODEL.PIXEL_MEAN``, which is in ``INPUT.FORMAT`` channel order), min-IoU crop,
    resize to ``SIZE`` and Detectron2's ``INPUT.RANDOM_FLIP`` (mmdet flips after the resize)."""
    c = cfg.INPUT.SSD_AUGMENTATION
    augs: List[T.Augmentation] = []
    if c.BRIGHTNESS_DELTA > 0 or c.HUE_DELTA > 0 or tuple(c.CONTRAST_RANGE) != (1.0, 1.0) \
            or tuple(c.SATURATION_RANGE) != (1.0, 1.0):
        augs.append(RandomPhotometricDistortion(c.BRIGHTNESS_DELTA, tuple(c.CONTRAST_RANGE),
                                                tuple(c.SATURATION_RANGE), c.HUE_DELTA,
                                                cfg.INPUT.FORMAT))
    if c.EXPAND_PROB > 0:
        augs.append(RandomExpand(tuple(cfg.MODEL.PIXEL_MEAN), tuple(c.EXPAND_RATIO_RANGE),
                                 c.EXPAND_PROB))
    if len(c.CROP_MIN_IOUS) or c.CROP_MIN_SIZE < 1:
        augs.append(MinIoURandomCrop(tuple(c.CROP_MIN_IOUS), c.CROP_MIN_SIZE,
                                     tuple(c.CROP_ASPECT_RANGE), c.CROP_MAX_TRIALS))
    augs.append(FixedSizeResize(tuple(c.SIZE)))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


def _annotation_masks(annos, height: int, width: int) -> np.ndarray:
    """(H, W, N) uint8 binary masks of the annotations (polygons, RLE or binary arrays)."""
    masks = np.zeros((height, width, len(annos)), dtype=np.uint8)
    for i, obj in enumerate(annos):  # decoding is per object by nature (one RLE / polygon each)
        segm = obj["segmentation"]
        if isinstance(segm, list):
            m = utils.polygons_to_bitmask(segm, height, width) if segm else None
        elif isinstance(segm, dict):
            if isinstance(segm.get("counts"), list):
                segm = mask_util.frPyObjects(segm, *segm["size"])
            m = mask_util.decode(segm)
        else:
            m = np.asarray(segm)
        if m is not None:
            masks[..., i] = m.astype(bool)
    return masks


class SSDDatasetMapper:
    """Training mapper: read image → drop crowd GTs and GTs with box w or h ≤ ``min_gt_size``
    (original pixels, mmdet ``FilterAnnotations``) → augmentations → drop GTs whose centre left
    the image (the min-IoU crop rule) → clip boxes → (optionally) box := its mask's extent.

    Images that end up without objects are returned with empty ``instances`` (models train on
    them as all-background); they are not re-sampled.

    Output dict: ``image`` (C, H, W) float32 tensor (the photometric distortion is not clipped to
    [0, 255], as mmdet), ``instances`` with ``gt_boxes``, ``gt_classes`` and, if masks are
    loaded, ``gt_masks`` (:class:`BitMasks`), ``ssd_augmented`` = True, plus the dataset dict's
    other fields.
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str,
                 use_instance_mask: bool = True, min_gt_size: float = 0.0,
                 recompute_boxes: bool = True):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.min_gt_size = float(min_gt_size)
        self.recompute_boxes = recompute_boxes and use_instance_mask
        logger.info(f"[SSDDatasetMapper] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        c = cfg.INPUT.SSD_AUGMENTATION
        return {
            "augmentations": build_ssd_augmentation(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "min_gt_size": c.MIN_GT_SIZE,
            "recompute_boxes": c.RECOMPUTE_BOXES,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        h0, w0 = image.shape[:2]
        annos = [a for a in dataset_dict.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in annos], dtype=np.float32).reshape(-1, 4)
        keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_gt_size) & \
               ((boxes[:, 3] - boxes[:, 1]) > self.min_gt_size)
        annos = [a for a, k in zip(annos, keep) if k]
        boxes = boxes[keep]
        classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
        masks = _annotation_masks(annos, h0, w0) if self.use_instance_mask else None

        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        h, w = image.shape[:2]
        boxes = transforms.apply_box(boxes).reshape(-1, 4) if len(boxes) else boxes
        inside = centers_inside(boxes, 0, 0, w, h)  # GTs whose centre the crop kept
        boxes, classes = boxes[inside], classes[inside]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        instances = Instances((h, w))
        if masks is not None:
            if masks.shape[2]:
                masks = transforms.apply_segmentation(masks).reshape(h, w, -1)[..., inside]
            else:
                masks = np.zeros((h, w, 0), dtype=np.uint8)
            bit = BitMasks(torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
                           .to(torch.bool))
            instances.gt_masks = bit
            if self.recompute_boxes:
                boxes = bit.get_bounding_boxes().tensor.numpy()
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        nonempty = instances.gt_boxes.nonempty()  # e.g. a mask cropped to nothing
        dataset_dict["instances"] = instances[nonempty]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["ssd_augmented"] = True  # lets a model check that its loader applied it
        return dataset_dict


def build_train_mapper(cfg) -> Optional[object]:
    """:class:`SSDDatasetMapper` if ``INPUT.SSD_AUGMENTATION.ENABLED`` else Detectron2's
    ``DatasetMapper(cfg, True)``; pass it to ``build_detection_train_loader(cfg, mapper=...)``."""
    if cfg.INPUT.SSD_AUGMENTATION.ENABLED:
        return SSDDatasetMapper(cfg, True)
    return DatasetMapper(cfg, True)
