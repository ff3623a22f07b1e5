"""SOLO / SOLOv2 / RS-SOLOv2: the meta-architecture ``SOLOv2`` (``meta_arch.py``, registered in
Detectron2's META_ARCH_REGISTRY on import), instance head, mask-feature branch, grid targets,
losses and inference, one per module."""
from .inference import SOLOTestConfig, masks_to_boxes, point_nms, solo_inference_single  # noqa
from .instance_head import SOLOInstanceHead, coord_features, split_level_features  # noqa
from .losses import positive_mask_dice, rs_solo_losses, solo_focal_dice_losses, solo_scalars  # noqa
from .mask_branch import SOLOv2MaskBranch, dynamic_mask_logits  # noqa
from .meta_arch import LOSSES, SOLOv2  # noqa
from .targets import SOLOTargets, build_solo_targets, level_cells, rescale_masks  # noqa
