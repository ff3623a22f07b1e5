"""Mask assembly of YOLACT (Sec. 3.2): ``M = σ(P Cᵀ)`` cropped by a box (mmdet ``yolact_head.py``).
"""
from typing import Optional

import torch

from rsloss_d2.losses._step_sums import counts_per_bin

__all__ = ["crop_masks", "assemble_masks", "assemble_masks_batched", "boxes_to_mask_frame"]


def boxes_to_mask_frame(boxes: torch.Tensor, input_size: int, mask_h: int, mask_w: int):
    """XYXY boxes in input pixels (square ``input_size``) → prototype pixels (float, no
    rounding): ``box / input_size × (W_p, H_p)``. (N, 4) → (N, 4)."""
    # no host sync: the two factors are computed on the host in the boxes' dtype (as the
    # device tensor ``[W_p, H_p, W_p, H_p] / input_size`` was) and applied as Python scalars,
    # which the product takes in that dtype: the same values, no host → device copy
    sx, sy = (torch.tensor([float(mask_w), float(mask_h)], dtype=boxes.dtype)
              / float(input_size)).tolist()
    return torch.stack([boxes[..., 0] * sx, boxes[..., 1] * sy,
                        boxes[..., 2] * sx, boxes[..., 3] * sy], dim=-1)


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero every mask outside its box, as the official ``YOLACTProtonet.crop``.

    ``x1 ← max(min(x1, x2) − padding, 0)``, ``x2 ← min(x2 + padding, W)`` (same for y); pixel
    column p is kept iff ``x1 ≤ p < x2`` (row q iff ``y1 ≤ q < y2``).

    Args:
        masks: (N, H, W).
        boxes: (N, 4) XYXY in mask pixel units (see :func:`boxes_to_mask_frame`).

    Returns:
        (N, H, W) cropped masks (differentiable w.r.t. ``masks``).
    """
    n, h, w = masks.shape
    x1 = (torch.min(boxes[:, 0], boxes[:, 2]) - padding).clamp(min=0)
    x2 = (boxes[:, 2] + padding).clamp(max=w)
    y1 = (torch.min(boxes[:, 1], boxes[:, 3]) - padding).clamp(min=0)
    y2 = (boxes[:, 3] + padding).clamp(max=h)
    cols = torch.arange(w, device=masks.device, dtype=boxes.dtype)
    rows = torch.arange(h, device=masks.device, dtype=boxes.dtype)
    keep_x = (cols[None] >= x1[:, None]) & (cols[None] < x2[:, None])  # (N, W)
    keep_y = (rows[None] >= y1[:, None]) & (rows[None] < y2[:, None])  # (N, H)
    keep = keep_y[:, :, None] & keep_x[:, None, :]
    return masks * keep.to(masks.dtype)


def assemble_masks(prototypes: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``σ(C · P)`` for one image. prototypes (P, H, W), coeffs (N, P) → (N, H, W) in [0, 1]."""
    p, h, w = prototypes.shape
    return torch.sigmoid(coeffs @ prototypes.reshape(p, h * w)).reshape(-1, h, w)


def assemble_masks_batched(prototypes: torch.Tensor, coeffs: torch.Tensor,
                           image_index: torch.Tensor,
                           max_per_image: Optional[int] = None) -> torch.Tensor:
    """``σ(C_k · P_{image(k)})`` for detections of several images in one batched product.

    Args:
        prototypes: (B, P, H, W).
        coeffs: (N, P) coefficients, grouped by image (``image_index`` non-decreasing).
        image_index: (N,) int64 image of each row.
        max_per_image: the most rows of one image, if the caller already read it on the host
            (e.g. with its count of positives); None: read here (one host sync).

    Returns:
        (N, H, W) mask probabilities.
    """
    b, p, h, w = prototypes.shape
    n = coeffs.shape[0]
    if n == 0:
        return prototypes.new_zeros((0, h, w)) + coeffs.sum() * 0
    counts = counts_per_bin(image_index, b)  # no host sync (bincount reads its max on CUDA)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=coeffs.device) - starts[image_index]
    # the padded width is a data-dependent shape: one host read, unless the caller has it
    width = int(counts.max()) if max_per_image is None else max_per_image
    padded = coeffs.new_zeros((b, width, p))
    padded = padded.index_put((image_index, slot), coeffs)
    logits = torch.bmm(padded, prototypes.reshape(b, p, h * w))  # (B, width, H·W)
    return torch.sigmoid(logits[image_index, slot]).reshape(n, h, w)
