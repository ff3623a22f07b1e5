"""Model components; importing the submodules registers them in Detectron2's registries."""
from . import proposal_generator  # noqa: F401  (registers RSRPN)
from . import roi_heads  # noqa: F401  (registers RSStandardROIHeads, RSCascadeROIHeads, RSMaskRCNNConvUpsampleHead)
from . import backbone  # noqa: F401  (registers the DCN ResNet and CARAFE FPN backbones)
