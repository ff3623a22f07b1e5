"""Proposal generators; importing this package registers ``RSRPN``."""
from .rs_rpn import RSRPN  # noqa: F401

__all__ = ["RSRPN"]
