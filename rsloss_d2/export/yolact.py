"""Traceable inference of YOLACT / RS-YOLACT for export: one (3, H, W) image → boxes (N, 4),
scores (N,), classes (N,) int64, masks (N, H, W) bool, all in the input image's frame.

The same steps as the eager ``YOLACT.forward`` at test time (Bolya et al., ICCV 2019, Sec. 3.2
mask assembly and Sec. 3.4 Fast NMS; the YOLACT head of the official RankSortLoss repository,
``mmdet/models/dense_heads/yolact_head.py``): resize to the S×S input, per-level top-k
candidates, decoding, Fast NMS, ``σ(P Cᵀ)`` cropped by the box, bilinear upsampling to (H, W),
threshold. What differs is only what a trace cannot follow: the eager Fast NMS shrinks its IoU
matrix to the widest class's count of candidates above the threshold (a host read, which a trace
would freeze); here all ``NMS_TOP_K`` columns stay, which gives the same detections (a candidate
at or below the threshold only suppresses lower-scored ones, below it too). The number of anchors
is fixed by S, so every other size in the graph is a constant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import shapes_to_tensor

__all__ = ["yolact_outputs", "fast_nms_traceable"]


def _pairwise_iou(boxes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(C, K, 4) XYXY → (C, K, K) IoU in mmdet's ``bbox_overlaps`` arithmetic (eps 1e-6)."""
    a, b = boxes[..., :, None, :], boxes[..., None, :, :]
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    overlap = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return overlap / (area_a + area_b - overlap).clamp(min=eps)


def fast_nms_traceable(boxes, scores, score_threshold: float, iou_threshold: float, top_k: int,
                       max_num: int):
    """Fast NMS (YOLACT Sec. 3.4) on a fixed (C, k, k) IoU matrix, k = min(top_k, N).

    Args:
        boxes: (N, 4) XYXY, shared by the classes. scores: (N, C) class scores.
    Returns:
        boxes (K, 4), scores (K,), classes (K,) int64, rows (K,) int64, by descending score.
    """
    num_boxes, num_classes = scores.shape
    k = min(int(top_k), num_boxes)  # N is fixed by the S×S input: a constant of the graph
    cls_scores, idx = scores.t().topk(k, dim=1, sorted=True)  # (C, k)
    cand = boxes[idx.reshape(-1)].reshape(num_classes, k, 4)
    iou_max = _pairwise_iou(cand).triu(diagonal=1).max(dim=1).values
    keep = (iou_max <= iou_threshold) & (cls_scores > score_threshold)
    classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    kept_scores, order = cls_scores[keep].sort(descending=True)
    if max_num > 0:
        order, kept_scores = order[:max_num], kept_scores[:max_num]
    rows = idx[keep][order]
    return boxes[rows], kept_scores, classes[order], rows


def yolact_outputs(model, image: torch.Tensor):
    """``(model, image) -> (boxes, scores, classes, masks)`` of a built ``YOLACT`` in eval mode."""
    from rsloss_d2.modeling.yolact.inference import select_candidates
    from rsloss_d2.modeling.yolact.masks import assemble_masks, boxes_to_mask_frame, crop_masks

    s = model.input_size
    h, w = image.shape[-2:]
    x = (image.to(model.device).float() - model.pixel_mean) / model.pixel_std
    # resizing an S×S input to S×S is the identity: the eager skip of that case changes nothing
    x = F.interpolate(x[None], size=(s, s), mode="bilinear", align_corners=False)
    features = model.backbone(x)
    feats = [features[f] for f in model.in_features]
    feature_sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feats]
    level_sizes = [fh * fw * len(model.aspect_ratios) for fh, fw in feature_sizes]
    logits, deltas, coeffs = model.head(feats)
    prototypes = model.protonet(feats[0])
    anchors = model.anchors(feature_sizes)
    if model.loss == "rank_sort":
        scores = torch.sigmoid(logits.float())
    else:
        scores = torch.softmax(logits.float(), dim=-1)[..., :-1]
    cfg = model.test_cfg
    rows = select_candidates(scores, level_sizes, cfg["topk_candidates"])[0]
    boxes = model.box_transform.apply_deltas(deltas[0, rows].float(), anchors[rows])
    boxes = boxes.clamp(min=0, max=float(s))
    boxes, det_scores, classes, kept = fast_nms_traceable(
        boxes, scores[0, rows].float(), cfg["score_thresh"], cfg["nms_thresh"],
        cfg["nms_top_k"], cfg["max_det"])
    hp, wp = prototypes.shape[-2:]
    masks = assemble_masks(prototypes[0].float(), coeffs[0, rows[kept]].float())
    masks = crop_masks(masks, boxes_to_mask_frame(boxes, s, hp, wp))
    masks = F.interpolate(masks[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    size = shapes_to_tensor([w, h, w, h], boxes.device).to(boxes.dtype)
    boxes = boxes * (size / float(s))
    # Boxes.clip((h, w)): x to [0, w], y to [0, h]
    boxes = torch.min(boxes.clamp(min=0), size)
    return boxes, det_scores, classes, masks > cfg["mask_thresh"]
