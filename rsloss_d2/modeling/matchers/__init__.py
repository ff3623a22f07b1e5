"""Target assignment of every family, in one place (plain functions, no registry).

* :mod:`.max_iou` — mmdet's ``MaxIoUAssigner`` (:func:`max_iou_assign`, batched over images;
  :class:`MaxIoUMatcher`, the same rule behind Detectron2's ``Matcher`` interface for the RPN and
  the ROI heads) and the label encoding every assigner returns (GT index / ``NEGATIVE`` /
  ``IGNORED``);
* :mod:`.valid_flags` — which anchors lie inside their own padded image (mmdet ``valid_flags``);
* :mod:`.atss` — ATSS (:func:`atss_match`, :func:`atss_match_batch`, and :func:`atss_assign` on
  the valid anchors of a batch);
* :mod:`.paa` — PAA's GMM re-assignment (:func:`paa_reassign`, its batched EM
  :func:`gmm2_em_1d`); :mod:`.box_voting` — PAA's score voting at inference.

The IoUs they compare with thresholds are mmdet's arithmetic
(:mod:`rsloss_d2.layers.box_iou`).
"""
from .atss import atss_assign, atss_match, atss_match_batch
from .box_voting import score_voting
from .max_iou import (
    IGNORED,
    NEGATIVE,
    MaxIoUMatcher,
    max_iou_assign,
    max_iou_assign_ious,
    padded_gt_boxes,
)
from .paa import gmm2_em_1d, paa_reassign
from .valid_flags import OFFICIAL_PAD_DIVISOR, valid_anchor_mask, valid_grid_sizes

__all__ = [
    "IGNORED",
    "NEGATIVE",
    "MaxIoUMatcher",
    "OFFICIAL_PAD_DIVISOR",
    "atss_assign",
    "atss_match",
    "atss_match_batch",
    "gmm2_em_1d",
    "max_iou_assign",
    "max_iou_assign_ious",
    "padded_gt_boxes",
    "paa_reassign",
    "score_voting",
    "valid_anchor_mask",
    "valid_grid_sizes",
]
