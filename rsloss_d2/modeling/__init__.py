"""Model components, one folder per family; importing the submodules registers them in
Detectron2's registries."""
from . import backbone  # noqa: F401  (registers the DCN ResNet, CARAFE, P6/P7 and YOLACT FPNs)
from . import proposal_generator  # noqa: F401  (registers RSRPN)
from . import roi_heads  # noqa: F401  (registers the RS / GOL ROI heads and mask heads)
from . import ranking_retinanet  # noqa: F401  (registers RankingRetinaNet)
from . import solov2  # noqa: F401  (registers SOLOv2: SOLO / SOLOv2 / RS-SOLOv2)
from . import yolact  # noqa: F401  (registers YOLACT: YOLACT / RS-YOLACT)
