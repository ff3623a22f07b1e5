"""YOLACT / RS-YOLACT: the meta-architecture ``YOLACT`` (``meta_arch.py``, registered in
Detectron2's META_ARCH_REGISTRY on import), heads, anchors and targets, mask assembly, losses and
inference as separate modules; its FPN is ``rsloss_d2/modeling/backbone/yolact_fpn.py``."""
from .head import YOLACTHead, YOLACTProtonet, YOLACTSemanticHead  # noqa: F401
from .masks import assemble_masks, assemble_masks_batched, crop_masks  # noqa: F401
from .meta_arch import LOSSES, YOLACT  # noqa: F401
