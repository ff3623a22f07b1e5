"""Dice loss of SOLO / SOLOv2 (Milletari et al. 2016; SOLO paper Eq. 2–3), per instance.

The official code is ``dice_loss`` in ``mmdet/models/anchor_heads/solov2_head.py`` of the SOLO
repository (also used by RS-SOLOv2 in the official RankSortLoss repository). Pure PyTorch.
"""
from __future__ import annotations

import torch

__all__ = ["dice_coefficient", "dice_loss"]


def dice_coefficient(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """``D = 2 Σ p·m / ((Σ p² + eps) + (Σ m² + eps))`` per instance (SOLO Eq. 3, official eps).

    Args:
        pred: (N, ...) mask probabilities in [0, 1] (e.g. sigmoid of the mask logits).
        target: (N, ...) binary (or soft) targets, same shape.
        eps: added to each of the two squared sums (SOLO 0.001 each).

    Returns:
        (N,) coefficients in float32 (float64 inputs stay float64; fp16 / bf16 under autocast
        are computed and returned in float32); N = 0 gives an empty tensor attached to ``pred``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"dice: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p = pred.flatten(1).to(dtype)
    m = target.flatten(1).to(dtype)
    a = (p * m).sum(dim=1)
    b = (p * p).sum(dim=1) + eps
    c = (m * m).sum(dim=1) + eps
    return 2 * a / (b + c)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-instance dice loss ``1 − dice_coefficient(pred, target, eps)``, shape (N,)."""
    return 1 - dice_coefficient(pred, target, eps)
