"""Target assignment and box refinement of the dense detectors (plain functions, no registry).

* :func:`atss_match`, :func:`atss_match_batch` — ATSS assignment (models.md §3);
"""
from .atss import atss_match, atss_match_batch

__all__ = ["atss_match", "atss_match_batch"]
