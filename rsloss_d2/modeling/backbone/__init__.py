"""Backbones; importing registers `build_resnet_dcn_backbone`, `build_resnet_dcn_fpn_backbone`,
`build_resnet_fpn_carafe_backbone`, `build_retinanet_fpn_p6p7_backbone` and
`build_yolact_resnet_fpn_backbone` in Detectron2's BACKBONE_REGISTRY."""
from . import resnet_dcn  # noqa: F401
from . import fpn_carafe  # noqa: F401
from . import retinanet_fpn  # noqa: F401  (build_retinanet_fpn_p6p7_backbone)
from . import yolact_fpn  # noqa: F401  (build_yolact_resnet_fpn_backbone)
