"""ROI heads of the RS R-CNN family; importing this package registers ``RSStandardROIHeads``,
``RSCascadeROIHeads`` (ROI_HEADS_REGISTRY) and ``RSMaskRCNNConvUpsampleHead``
(ROI_MASK_HEAD_REGISTRY). ``RSFastRCNNOutputLayers`` is the box predictor they build."""
from .rs_cascade_rcnn import RSCascadeROIHeads  # noqa: F401
from .rs_fast_rcnn import RSFastRCNNOutputLayers  # noqa: F401
from .rs_mask_head import RSMaskRCNNConvUpsampleHead  # noqa: F401
from .rs_roi_heads import RSStandardROIHeads  # noqa: F401
# GOL (long tail): registers GOLROIHeads and NormedMaskRCNNConvUpsampleHead
from .activation_fast_rcnn import ActivationFastRCNNOutputLayers  # noqa: F401
from .gol_roi_heads import GOLROIHeads  # noqa: F401
from .normed_mask_head import NormedMaskRCNNConvUpsampleHead  # noqa: F401

__all__ = [
    "RSStandardROIHeads",
    "RSCascadeROIHeads",
    "RSFastRCNNOutputLayers",
    "RSMaskRCNNConvUpsampleHead",
    "ActivationFastRCNNOutputLayers",
    "GOLROIHeads",
    "NormedMaskRCNNConvUpsampleHead",
]
