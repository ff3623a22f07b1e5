"""Model components; importing the submodules registers them in Detectron2's registries."""
from . import proposal_generator  # noqa: F401  (registers RSRPN)
from . import roi_heads  # noqa: F401  (registers the RS ROI heads and RS mask head)
from . import backbone  # noqa: F401  (registers the DCN ResNet and CARAFE FPN backbones)
from . import meta_arch  # noqa: F401  (registers the meta-architectures, e.g. SOLOv2)
