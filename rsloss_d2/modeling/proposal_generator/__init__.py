"""Proposal generators; importing this package registers ``RSRPN``."""
from .max_iou_matcher import MaxIoUMatcher  # noqa: F401
from .rs_rpn import RSRPN  # noqa: F401

__all__ = ["RSRPN", "MaxIoUMatcher"]
