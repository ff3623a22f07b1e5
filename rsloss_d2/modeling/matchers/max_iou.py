"""mmdet's ``MaxIoUAssigner``, once, for the RPN, the ROI heads, RankingRetinaNet and YOLACT.

The rule (``mmdet/core/bbox/assigners/max_iou_assigner.py``, mmdet 2.x as the official
repositories pin it): every prediction takes its best GT (first GT on ties); it is positive if
that IoU is ≥ ``pos_iou_thr``, negative if < ``neg_iou_thr``, ignored in between. With
``match_low_quality`` every GT whose best IoU is ≥ ``min_pos_iou`` also claims its best
prediction(s) — all predictions tied at that IoU (``gt_max_assign_all=True``) or only the first
(``False``, YOLACT) — whatever their IoU; later GTs override earlier ones on a shared prediction
(mmdet's loop order). Detectron2's ``Matcher(allow_low_quality_matches=True)`` has no
``min_pos_iou`` and keeps the prediction's argmax GT instead; :class:`MaxIoUMatcher` gives the
mmdet rule behind Detectron2's ``Matcher`` interface.

One encoding of the result, shared with :func:`~rsloss_d2.modeling.matchers.atss_assign` and
PAA: per prediction the index of its GT (``>= 0``, positive), ``NEGATIVE`` (−1) or ``IGNORED``
(−2: the ignore band, or an invalid anchor — see :mod:`.valid_flags`).
"""
from typing import List, Optional, Tuple

import torch
from detectron2.modeling.matcher import Matcher

from ...layers.box_iou import pairwise_iou_mmdet

__all__ = [
    "NEGATIVE",
    "IGNORED",
    "padded_gt_boxes",
    "max_iou_assign_ious",
    "max_iou_assign",
    "MaxIoUMatcher",
]

NEGATIVE = -1
IGNORED = -2


def padded_gt_boxes(gt_boxes: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """List of (G_i, 4) → ((N, G_max, 4) boxes, (N, G_max) bool mask of the real GTs)."""
    num = max([len(b) for b in gt_boxes] + [0])
    ref = gt_boxes[0]
    boxes = ref.new_zeros((len(gt_boxes), num, 4))
    real = torch.zeros((len(gt_boxes), num), dtype=torch.bool, device=ref.device)
    for i, b in enumerate(gt_boxes):  # N small copies; the assignment itself is batched
        boxes[i, : len(b)] = b
        real[i, : len(b)] = True
    return boxes, real


@torch.no_grad()
def max_iou_assign_ious(
    ious: torch.Tensor,
    valid: torch.Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    gt_max_assign_all: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The MaxIoU rule (module docstring) on a batch of IoU matrices.

    Args:
        ious: (N, G, R) IoU of every GT with every prediction, −1 where the pair takes no part
            (a padded GT row, an invalid prediction).
        valid: (N, R) bool, the predictions that take part; an invalid one is ``IGNORED``.
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality, gt_max_assign_all: mmdet's.
            With ``gt_max_assign_all`` a GT whose best IoU is 0 (e.g. a degenerate box) hands out
            no low-quality match, where mmdet (``min_pos_iou=0``) would make every zero-IoU
            prediction positive for it; without it the GT claims its first prediction, as mmdet.

    Returns:
        assigned (N, R) int64 (GT index / ``NEGATIVE`` / ``IGNORED``) and best (N, R) int64, the
        best GT of every prediction (first on ties; 0 when G = 0), which Detectron2's
        ``Matcher`` interface returns for negatives too.
    """
    n, g, r = ious.shape
    if g == 0:
        neg = torch.full((n, r), NEGATIVE, dtype=torch.long, device=ious.device)
        return neg.masked_fill_(~valid, IGNORED), torch.zeros_like(neg)
    max_iou, best = ious.max(dim=1)  # (N, R)
    # a valid prediction of an image without a real GT (only −1 rows) has IoU 0: negative
    max_iou = torch.where(valid, max_iou.clamp(min=0), max_iou)
    out = torch.full((n, r), IGNORED, dtype=torch.long, device=ious.device)
    out = torch.where((max_iou >= 0) & (max_iou < neg_iou_thr), NEGATIVE, out)
    out = torch.where(max_iou >= pos_iou_thr, best, out)
    if not match_low_quality:
        return out, best
    # padded GT rows (all −1) never reach min_pos_iou >= 0, so they claim nothing
    gt_best, gt_first = ious.max(dim=2)  # (N, G)
    claims = gt_best >= min_pos_iou
    if gt_max_assign_all:
        claims &= gt_best > 0
        is_best = (ious == gt_best[..., None]) & claims[..., None]  # (N, G, R)
        has = is_best.any(dim=1)
        claimant = g - 1 - is_best.flip(1).to(torch.uint8).argmax(dim=1)  # the last GT
    else:
        gt_ids = torch.arange(g, device=ious.device).expand(n, g)
        src = torch.where(claims, gt_ids, torch.full_like(gt_ids, -1))
        claimant = torch.full((n, r), -1, dtype=torch.long, device=ious.device)
        claimant.scatter_reduce_(1, gt_first, src, reduce="amax", include_self=True)
        has = claimant >= 0
    return torch.where(has, claimant, out), best


@torch.no_grad()
def max_iou_assign(anchors: torch.Tensor, gt_boxes, valid: torch.Tensor, pos_iou_thr: float,
                   neg_iou_thr: float, min_pos_iou: float = 0.0, match_low_quality: bool = True,
                   gt_max_assign_all: bool = True, gt_valid: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """:func:`max_iou_assign_ious` of shared anchors against every image's GTs, all at once.

    Args:
        anchors: (R, 4) XYXY anchors of all levels.
        gt_boxes: N tensors (G_i, 4) XYXY, or one padded (N, G, 4) tensor with ``gt_valid``.
        valid: (N, R) bool from :func:`~rsloss_d2.modeling.matchers.valid_anchor_mask`
            (all True where every anchor takes part).
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality, gt_max_assign_all: as
            :func:`max_iou_assign_ious`.
        gt_valid: (N, G) bool, the real rows of a padded ``gt_boxes`` tensor.

    Returns:
        (N, R) int64: GT index, ``NEGATIVE`` or ``IGNORED``.
    """
    if torch.is_tensor(gt_boxes):
        boxes, real = gt_boxes, gt_valid
    else:
        boxes, real = padded_gt_boxes(list(gt_boxes))
    return max_iou_assign_ious(_masked_ious(boxes, real, anchors, valid), valid, pos_iou_thr,
                               neg_iou_thr, min_pos_iou, match_low_quality, gt_max_assign_all)[0]


def _masked_ious(boxes: torch.Tensor, real, anchors: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
    """(N, G, R) mmdet IoUs, −1 for padded GT rows (``real`` False) and invalid anchors."""
    ious = pairwise_iou_mmdet(boxes.float(), anchors.float())
    ious.masked_fill_(~valid[:, None, :], -1)
    if real is not None:
        ious.masked_fill_(~real[:, :, None], -1)
    return ious


class MaxIoUMatcher(Matcher):
    """Detectron2 ``Matcher`` interface to :func:`max_iou_assign_ious` (``gt_max_assign_all``).

    Args:
        thresholds, labels: as Detectron2's :class:`Matcher`: ``[neg, pos]`` with labels
            ``[0, -1, 1]``, or ``[thr]`` with ``[0, 1]``.
        allow_low_quality_matches: mmdet ``match_low_quality``.
        min_pos_iou: a GT hands out low-quality matches only if its best IoU is ≥ this.
    """

    def __init__(
        self,
        thresholds: List[float],
        labels: List[int],
        allow_low_quality_matches: bool = False,
        min_pos_iou: float = 0.0,
    ):
        super().__init__(thresholds, labels, allow_low_quality_matches=False)
        assert list(labels) in ([0, -1, 1], [0, 1]), labels
        self.match_low_quality = allow_low_quality_matches
        self.min_pos_iou = min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor):
        """
        Args:
            match_quality_matrix: (M, N) IoUs between M GTs and N predictions.

        Returns:
            matches (N,) int64 GT index per prediction (best GT, or the low-quality claimant),
            match_labels (N,) int8 in {1, 0, −1} (positive, negative, ignored).
        """
        if match_quality_matrix.numel() == 0:
            return super().__call__(match_quality_matrix)
        valid = match_quality_matrix.new_ones((1, match_quality_matrix.shape[1]), dtype=torch.bool)
        assigned, best = max_iou_assign_ious(
            match_quality_matrix[None], valid, self.thresholds[-2], self.thresholds[1],
            self.min_pos_iou, self.match_low_quality)
        assigned, best = assigned[0], best[0]
        labels = torch.where(assigned >= 0, 1, torch.where(assigned == NEGATIVE, 0, -1))
        return torch.where(assigned >= 0, assigned, best), labels.to(torch.int8)
