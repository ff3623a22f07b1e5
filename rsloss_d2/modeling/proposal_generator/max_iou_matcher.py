"""Detectron2 ``Matcher`` with mmdet ``MaxIoUAssigner``'s low-quality-match rule.

The official RS models (mmdet 2.8) assign anchors / RoIs with ``MaxIoUAssigner``
(``shared/spec/models.md`` §1): positive if max IoU ≥ ``pos_iou_thr``, negative if
< ``neg_iou_thr``, ignored in between, and, with ``match_low_quality=True``, every prediction whose IoU with a GT
equals that GT's best IoU becomes positive **for that GT** — but only if that best IoU is
≥ ``min_pos_iou`` (0.3 for the RPN). Detectron2's ``Matcher(allow_low_quality_matches=True)``
has no ``min_pos_iou`` (a GT whose best anchor has IoU 0.05 still gets it) and keeps the
prediction's argmax GT instead of re-assigning it. This subclass implements the mmdet rule.
"""
from typing import List

import torch
from detectron2.modeling.matcher import Matcher

__all__ = ["MaxIoUMatcher"]


class MaxIoUMatcher(Matcher):
    """Matcher with mmdet's ``match_low_quality`` / ``min_pos_iou`` semantics.

    Args:
        thresholds, labels: as Detectron2's :class:`Matcher` (e.g. ``[0.3, 0.7]``, ``[0, -1, 1]``).
        allow_low_quality_matches: mmdet ``match_low_quality``.
        min_pos_iou: a GT hands out low-quality matches only if its best IoU is ≥ this.
            Later GTs override earlier ones on shared predictions (mmdet's loop order).
    """

    def __init__(
        self,
        thresholds: List[float],
        labels: List[int],
        allow_low_quality_matches: bool = False,
        min_pos_iou: float = 0.0,
    ):
        super().__init__(thresholds, labels, allow_low_quality_matches=False)
        self.match_low_quality = allow_low_quality_matches
        self.min_pos_iou = min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor):
        """
        Args:
            match_quality_matrix: (M, N) IoUs between M GTs and N predictions.

        Returns:
            matches (N,) int64 GT index per prediction, match_labels (N,) int8 in {-1, 0, 1}.
        """
        matches, match_labels = super().__call__(match_quality_matrix)
        if not self.match_low_quality or match_quality_matrix.numel() == 0:
            return matches, match_labels
        gt_best = match_quality_matrix.max(dim=1).values  # (M,)
        gt_ok = gt_best >= self.min_pos_iou
        if self.min_pos_iou <= 0:
            gt_ok &= gt_best > 0  # mmdet would hand every zero-IoU prediction to that GT
        is_best = (match_quality_matrix == gt_best[:, None]) & gt_ok[:, None]  # (M, N)
        has = is_best.any(dim=0)
        num_gt = match_quality_matrix.shape[0]
        # last GT (highest index) with is_best wins, as in mmdet's per-GT loop
        last = num_gt - 1 - is_best.flip(0).to(torch.uint8).argmax(dim=0)
        matches = torch.where(has, last, matches)
        match_labels = torch.where(has, torch.ones_like(match_labels), match_labels)
        return matches, match_labels
