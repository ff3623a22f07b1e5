"""The ranking-loss dense detectors (aLRP / AP-Loss RetinaNet, RS-ATSS, RS-PAA): the
meta-architecture ``RankingRetinaNet`` (registered in Detectron2's META_ARCH_REGISTRY on import),
its head and its losses; their assignment lives in ``rsloss_d2.modeling.matchers``."""
from .head import RankingRetinaNetHead  # noqa: F401
from .losses import alrp_dense_losses, ap_dense_losses, rs_dense_losses  # noqa: F401
from .meta_arch import LOSSES, RankingRetinaNet, self_balance_period  # noqa: F401
