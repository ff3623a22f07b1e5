"""Parts of the ranking-loss dense detectors: the head and the losses (their assignment lives in
``rsloss_d2.modeling.matchers``)."""
from .ranking_dense_losses import alrp_dense_losses, ap_dense_losses, rs_dense_losses  # noqa: F401
from .ranking_retina_head import RankingRetinaNetHead  # noqa: F401
