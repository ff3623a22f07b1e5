"""Parts of YOLACT / RS-YOLACT (meta-arch in ``meta_arch/yolact.py``): FPN backbone (registers
``build_yolact_resnet_fpn_backbone``), heads, anchors and targets, mask assembly, losses and
inference as separate modules."""
from .fpn import build_yolact_resnet_fpn_backbone  # noqa: F401  (registers the backbone)
from .head import YOLACTHead, YOLACTProtonet, YOLACTSemanticHead  # noqa: F401
from .masks import assemble_masks, assemble_masks_batched, crop_masks  # noqa: F401
