"""Score voting of PAA (Kim & Lee, ECCV 2020, §3.4; RS-PAA ``score_voting=True``,
mmdet's ``mmdet/models/dense_heads/paa_head.py``), one tensor computation for all kept
detections of an image.

For every detection d kept by NMS (class c_d), the neighbours are the pre-NMS candidates (after
``nms_pre``) i with score s_{i,c_d} > ``score_thr`` for that class and IoU(d, b_i) > 0.01 (d itself
is among them); the voted box is

    b̂_d = Σ_i p_i b_i / Σ_i p_i,    p_i = exp(−(1 − IoU(d, b_i))² / σ) · s_{i,c_d},  σ = 0.025.

The score of d is unchanged. The official code loops over classes and detections.
"""
import torch

from ...layers.box_iou import pairwise_iou_mmdet

__all__ = ["score_voting"]


def score_voting(det_boxes: torch.Tensor, det_labels: torch.Tensor, cand_boxes: torch.Tensor,
                 cand_scores: torch.Tensor, score_thr: float = 0.05,
                 sigma: float = 0.025) -> torch.Tensor:
    """Voted boxes of one image's detections.

    Args:
        det_boxes: (D, 4) XYXY boxes kept by NMS.
        det_labels: (D,) int64 class of each detection.
        cand_boxes: (M, 4) XYXY decoded (clipped) candidate boxes before NMS, one per anchor.
        cand_scores: (M, C) their per-class scores (sigmoid).
        score_thr: candidates of a class need a score above it (the test score_thr, 0.05).
        sigma: σ of the IoU weighting (0.025).
    Returns:
        (D, 4) voted boxes, in the order of ``det_boxes`` (the official head then regroups the
        detections by class; the order does not change evaluation). A detection without any
        neighbour (not possible when it is itself a candidate above the threshold) keeps its box.
    """
    if det_boxes.numel() == 0 or cand_boxes.numel() == 0:
        return det_boxes.reshape(-1, 4).clone()
    dtype = torch.promote_types(det_boxes.dtype, torch.float32)  # fp16 inputs: vote in fp32
    dets, cands = det_boxes.to(dtype), cand_boxes.to(dtype)
    ious = pairwise_iou_mmdet(dets, cands)  # (D, M)
    scores = cand_scores.to(dtype).t()[det_labels]  # (D, M): score of each candidate for c_d
    weight = torch.exp(-(1 - ious) ** 2 / sigma) * scores
    weight = torch.where((scores > score_thr) & (ious > 0.01), weight, 0.0)
    total = weight.sum(1, keepdim=True)
    voted = (weight @ cands) / total.clamp(min=torch.finfo(dtype).tiny)
    return torch.where(total > 0, voted, dets).to(det_boxes.dtype)
