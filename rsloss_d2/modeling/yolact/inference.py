"""Inference of YOLACT / RS-YOLACT (``get_bboxes`` of mmdet's ``yolact_head.py``): per-level top-k,
decoding, Fast NMS, mask assembly, crop by the predicted box, upsampling to the output image size,
threshold.

The meta-arch's ``forward`` calls :func:`yolact_inference` both for evaluation and for
``tools/demo.py`` (``DefaultPredictor``), so both draw the same masks.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from rsloss_d2.layers import fast_nms

from .masks import assemble_masks, boxes_to_mask_frame, crop_masks

__all__ = ["select_candidates", "yolact_inference"]


def select_candidates(scores: torch.Tensor, level_sizes: Sequence[int], topk: int) -> torch.Tensor:
    """Per image and level, the ``topk`` rows of highest max-class score (official ``nms_pre``).

    Args:
        scores: (B, R, K) class scores (no background). level_sizes: rows per level (sum R).

    Returns:
        (B, M) int64 row indices, M = Σ_l min(topk, R_l).
    """
    best = scores.max(dim=2).values
    out, start = [], 0
    for n in level_sizes:  # five FPN levels, each one batched over images
        k = min(topk, n) if topk > 0 else n
        out.append(best[:, start:start + n].topk(k, dim=1).indices + start)
        start += n
    return torch.cat(out, dim=1)


def yolact_inference(scores: torch.Tensor, deltas: torch.Tensor, coeffs: torch.Tensor,
                     prototypes: torch.Tensor, anchors: torch.Tensor, level_sizes: Sequence[int],
                     box_transform: Box2BoxTransform, input_size: int,
                     output_sizes: List[Tuple[int, int]], topk_candidates: int,
                     score_thresh: float, nms_thresh: float, nms_top_k: int, max_det: int,
                     mask_thresh: float) -> List[Instances]:
    """Detections with full-image masks in each output image's frame.

    Args:
        scores: (B, R, K) class probabilities (sigmoid, or softmax without background).
        deltas: (B, R, 4). coeffs: (B, R, P). prototypes: (B, P, H_p, W_p).
        anchors: (R, 4) in the S×S input frame. output_sizes: (height, width) per image.

    Returns:
        per image ``Instances`` of size (height, width) with ``pred_boxes``, ``scores``,
        ``pred_classes`` and ``pred_masks`` (N, height, width) bool.
    """
    rows = select_candidates(scores, level_sizes, topk_candidates)  # (B, M)
    results = []
    _, _, hp, wp = prototypes.shape
    for i, (out_h, out_w) in enumerate(output_sizes):  # Fast NMS and masks per image
        r = rows[i]
        boxes = box_transform.apply_deltas(deltas[i, r].float(), anchors[r])
        boxes = boxes.clamp(min=0, max=float(input_size))
        boxes, det_scores, classes, kept = fast_nms(boxes, scores[i, r].float(), score_thresh,
                                                    nms_thresh, nms_top_k, max_det)
        masks = assemble_masks(prototypes[i].float(), coeffs[i, r[kept]].float())
        masks = crop_masks(masks, boxes_to_mask_frame(boxes, input_size, hp, wp))
        if masks.shape[0]:
            masks = F.interpolate(masks[None], size=(out_h, out_w), mode="bilinear",
                                  align_corners=False)[0]
        else:
            masks = masks.new_zeros((0, out_h, out_w))
        scale = boxes.new_tensor([out_w, out_h, out_w, out_h]) / float(input_size)
        out_boxes = Boxes(boxes * scale)
        out_boxes.clip((out_h, out_w))
        inst = Instances((out_h, out_w))
        inst.pred_boxes = out_boxes
        inst.scores = det_scores
        inst.pred_classes = classes
        inst.pred_masks = masks > mask_thresh
        results.append(inst)
    return results
