"""SSD-style training augmentation (photometric distortion, expand, min-IoU crop, fixed-size
resize) as Detectron2 transforms, and the training mapper that applies it to images, boxes and
instance masks alike (config keys ``INPUT.SSD_AUGMENTATION.*``)."""
from .mapper import SSDDatasetMapper, build_ssd_augmentation, build_train_mapper
from .ssd_augmentation import (
    CV2ResizeTransform,
    ExpandTransform,
    FixedSizeResize,
    MinIoURandomCrop,
    PhotometricDistortTransform,
    RandomExpand,
    RandomPhotometricDistortion,
)

__all__ = [
    "SSDDatasetMapper",
    "build_ssd_augmentation",
    "build_train_mapper",
    "PhotometricDistortTransform",
    "RandomPhotometricDistortion",
    "ExpandTransform",
    "RandomExpand",
    "MinIoURandomCrop",
    "CV2ResizeTransform",
    "FixedSizeResize",
]
