"""Target assignment and box refinement of the dense detectors (plain functions, no registry).

* :func:`atss_match`, :func:`atss_match_batch` — ATSS assignment (models.md §3);
* :func:`paa_reassign` (with its batched EM :func:`gmm2_em_1d`) — PAA's GMM re-assignment (§4);
* :func:`score_voting` — PAA's score voting at inference (§4).
"""
from .atss import atss_match, atss_match_batch
from .box_voting import score_voting
from .paa import gmm2_em_1d, paa_reassign

__all__ = ["atss_match", "atss_match_batch", "gmm2_em_1d", "paa_reassign", "score_voting"]
