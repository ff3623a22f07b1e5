"""Parts of the ranking-loss dense detectors: the head, batched anchor assignment, the losses."""
from .dense_assignment import (  # noqa: F401
    IGNORED,
    NEGATIVE,
    atss_assign,
    max_iou_assign,
    valid_anchor_mask,
)
from .ranking_dense_losses import alrp_dense_losses, ap_dense_losses, rs_dense_losses  # noqa: F401
from .ranking_retina_head import RankingRetinaNetHead  # noqa: F401
