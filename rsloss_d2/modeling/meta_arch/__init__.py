"""Meta-architectures (registered in Detectron2's META_ARCH_REGISTRY on import)."""
from .ranking_retinanet import RankingRetinaNet, self_balance_period  # noqa: F401  (RetinaNets)
from .solov2 import SOLOv2  # noqa: F401  (registers SOLOv2: SOLO / SOLOv2 / RS-SOLOv2)
from .yolact import YOLACT  # noqa: F401  (registers YOLACT: YOLACT / RS-YOLACT)
