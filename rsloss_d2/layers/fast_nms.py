"""Fast NMS of YOLACT (Bolya et al., ICCV 2019, Sec. 3.4), as the official YOLACT head uses it.

Official code: ``fast_nms`` in ``mmdet/core/post_processing/bbox_nms.py`` (the YOLACT head of
the official RankSortLoss repository calls it). One batched computation over all classes: per
class the ``top_k`` candidates by that class's score, a (C, k, k) IoU matrix, and a candidate is
kept if its IoU with every *higher-scored* candidate of the same class is ``≤ iou_threshold`` —
already-suppressed candidates still suppress (that is what makes it "fast": no sequential
dependence) — and its score is ``> score_threshold``; then the kept (box, class) pairs of all
classes are sorted by score and the best ``max_num`` are returned.
"""
from typing import Tuple

import torch

from .box_iou import pairwise_iou_mmdet

__all__ = ["fast_nms"]


def fast_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    top_k: int,
    max_num: int = -1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast NMS over all classes at once (YOLACT Sec. 3.4; mmdet ``fast_nms``).

    Args:
        boxes: (N, 4) XYXY boxes, shared by all classes.
        scores: (N, C) class scores, no background column.
        score_threshold: a kept detection has score ``> score_threshold``.
        iou_threshold: a candidate survives if its IoU with every higher-scored candidate of its
            class (suppressed or not) is ``≤ iou_threshold``.
        top_k: candidates per class, the highest ``top_k`` scores of that class.
        max_num: detections returned over all classes, by score (``≤ 0``: all).

    Returns:
        boxes (K, 4), scores (K,), classes (K,) int64, indices (K,) int64 — the row of ``boxes``
        each kept detection came from; sorted by descending score. ``N = 0`` gives four empty
        tensors.
    """
    num_boxes, num_classes = scores.shape
    k = min(int(top_k), num_boxes)
    if k == 0 or num_classes == 0:
        empty_long = torch.zeros((0,), dtype=torch.int64, device=boxes.device)
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), empty_long, empty_long.clone()
    # per class: its top-k candidates in descending score order, (C, k) (mmdet: sort, then the
    # first top_k; topk gives the same for distinct scores)
    cls_scores, idx = scores.t().topk(k, dim=1, sorted=True)
    # A candidate at or below the score threshold can only suppress lower-scored ones, which are
    # below the threshold too: leaving those columns out changes nothing and shrinks the IoU
    # matrix to the widest class's count of candidates above the threshold (host read).
    k = int((cls_scores > score_threshold).sum(dim=1).max())
    cls_scores, idx = cls_scores[:, :k], idx[:, :k]
    cand = boxes[idx.reshape(-1)].reshape(num_classes, k, 4)
    iou = pairwise_iou_mmdet(cand, cand).triu_(diagonal=1)  # [c, i, j]: i scored above j
    iou_max = iou.max(dim=1).values if k else cls_scores  # (C, k): max IoU with higher-scored
    keep = (iou_max <= iou_threshold) & (cls_scores > score_threshold)
    classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    kept_scores = cls_scores[keep]
    kept_rows = idx[keep]
    kept_scores, order = kept_scores.sort(descending=True)
    if max_num > 0:
        order, kept_scores = order[:max_num], kept_scores[:max_num]
    rows = kept_rows[order]
    return boxes[rows], kept_scores, classes[order], rows
