"""Inference of SOLO / SOLOv2: point NMS, maskness, Matrix NMS, masks at the image size.

Official: ``get_seg`` of ``mmdet/models/anchor_heads/solov2_head.py`` (and ``solo_head.py`` for
SOLO's masks) of the SOLO repository. Memory is bounded by ``nms_pre``
and the mask resolution, never by the number of candidates above ``score_thr``: candidate masks
are computed in chunks of at most ``nms_pre`` (only their scores are kept), then the masks of
the ``nms_pre`` best are recomputed for Matrix NMS, and the final ≤ ``max_per_img`` masks are
upsampled to the image size in small chunks and stored as bool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

from rsloss_d2.layers import matrix_nms

__all__ = ["SOLOTestConfig", "point_nms", "masks_to_boxes", "solo_inference_single"]

_UPSAMPLE_CHUNK = 16  # final masks upsampled this many at a time (bounds the float buffers)


@dataclass
class SOLOTestConfig:
    """Test-time thresholds (official test_cfg; AdelaiDet ``MODEL.SOLOV2.*`` names)."""

    score_thr: float = 0.1  # SCORE_THR (RS-SOLOv2: 0.2)
    mask_thr: float = 0.5  # MASK_THR
    nms_pre: int = 500  # NMS_PRE
    update_thr: float = 0.05  # UPDATE_THR
    max_per_img: int = 100  # MAX_PER_IMG
    nms_kernel: str = "gaussian"  # NMS_KERNEL
    nms_sigma: float = 2.0  # NMS_SIGMA


def point_nms(probs: torch.Tensor) -> torch.Tensor:
    """Keep a cell's probability only where it is the max of its 2×2 top-left window (official
    ``points_nms``).

    Args:
        probs: (B, C, S, S) category probabilities. Returns the same shape, others set to 0.
    """
    pooled = F.max_pool2d(probs, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return probs * (pooled == probs).to(probs.dtype)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (Detectron2 convention: x2 = last column + 1) of (N, H, W) bool masks.

    Vectorised (no loop over masks); an empty mask gives a zero box.
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    y1 = rows.float().argmax(dim=1)
    y2 = h - rows.flip(1).float().argmax(dim=1)
    x1 = cols.float().argmax(dim=1)
    x2 = w - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return boxes * rows.any(dim=1, keepdim=True).float()


def _empty(out_size: Tuple[int, int], device) -> Instances:
    res = Instances(out_size)
    res.pred_masks = torch.zeros((0,) + tuple(out_size), dtype=torch.bool, device=device)
    res.pred_boxes = Boxes(torch.zeros((0, 4), device=device))
    res.scores = torch.zeros((0,), device=device)
    res.pred_classes = torch.zeros((0,), dtype=torch.int64, device=device)
    return res


def solo_inference_single(
    cate_probs: torch.Tensor,
    cell_strides: torch.Tensor,
    soft_masks_of: Callable[[torch.Tensor], torch.Tensor],
    image_size: Tuple[int, int],
    out_size: Tuple[int, int],
    cfg: SOLOTestConfig,
) -> Instances:
    """Detections of one image (official ``get_seg_single``).

    Args:
        cate_probs: (ΣS², C) category probabilities after :func:`point_nms`.
        cell_strides: (ΣS²,) numeric stride of each cell's level (8, 8, 16, 32, 32): a mask
            needs more than that many stride-4 pixels.
        soft_masks_of: cells (n,) → (n, H_m, W_m) mask probabilities at stride 4 of the padded
            input (the dynamic conv, or SOLO's upsampled channel maps).
        image_size: (h, w) of the resized input inside the padded batch.
        out_size: (H, W) of the original image; masks are returned at this size.

    Returns:
        Instances with ``pred_masks`` (N, H, W) bool, ``scores`` (decayed by Matrix NMS),
        ``pred_classes``, ``pred_boxes`` (from the masks); empty if nothing survives.
    """
    device = cate_probs.device
    cells, classes = (cate_probs > cfg.score_thr).nonzero(as_tuple=True)
    if cells.numel() == 0:
        return _empty(out_size, device)
    probs = cate_probs[cells, classes]

    chunk = max(int(cfg.nms_pre), 1)
    scores, keep_masks = [], None
    for start in range(0, cells.numel(), chunk):  # chunks bound memory by nms_pre masks
        soft = soft_masks_of(cells[start:start + chunk])
        binary = soft > cfg.mask_thr
        area = binary.sum(dim=(1, 2)).to(soft.dtype)
        maskness = (soft * binary).sum(dim=(1, 2)) / area.clamp(min=1)
        score = probs[start:start + chunk] * maskness
        # drop masks of ≤ stride pixels (strict > keeps): score −1 never survives
        scores.append(torch.where(area > cell_strides[cells[start:start + chunk]], score,
                                  torch.full_like(score, -1)))
        if cells.numel() <= chunk:
            keep_masks = soft
    scores = torch.cat(scores)
    order = torch.argsort(scores, descending=True)[:cfg.nms_pre]
    order = order[scores[order] >= 0]
    if order.numel() == 0:
        return _empty(out_size, device)
    soft = keep_masks[order] if keep_masks is not None else soft_masks_of(cells[order])
    cells, classes, scores = cells[order], classes[order], scores[order]

    decayed = matrix_nms(soft > cfg.mask_thr, classes, scores, kernel=cfg.nms_kernel,
                         sigma=cfg.nms_sigma)
    keep = (decayed >= cfg.update_thr).nonzero().squeeze(1)
    if keep.numel() == 0:
        return _empty(out_size, device)
    decayed = decayed[keep]
    order = torch.argsort(decayed, descending=True)[:cfg.max_per_img]
    soft, classes, decayed = soft[keep][order], classes[keep][order], decayed[order]

    h_m, w_m = soft.shape[-2:]
    h, w = image_size
    masks = []
    for start in range(0, soft.shape[0], _UPSAMPLE_CHUNK):
        m = F.interpolate(soft[start:start + _UPSAMPLE_CHUNK, None], size=(4 * h_m, 4 * w_m),
                          mode="bilinear", align_corners=False)[:, :, :h, :w]
        m = F.interpolate(m, size=tuple(out_size), mode="bilinear", align_corners=False)
        masks.append(m[:, 0] > cfg.mask_thr)
    masks = torch.cat(masks)

    res = Instances(tuple(out_size))
    res.pred_masks = masks
    res.pred_boxes = Boxes(masks_to_boxes(masks))
    res.scores = decayed
    res.pred_classes = classes
    return res
