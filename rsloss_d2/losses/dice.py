"""The per-instance dice loss (Milletari et al. 2016; SOLO paper Eq. 2–3) of every mask head.

Two placements of eps, as the official heads have them: SOLO / SOLOv2 / RS-SOLOv2 (``dice_loss``
in ``mmdet/models/anchor_heads/solov2_head.py`` of the SOLO repository, also used by RS-SOLOv2 in
the official RankSortLoss repository) add eps to each of the two squared sums; RS-Mask R-CNN
(the RS mask head of the official RankSortLoss repository) adds it once to their sum
(``eps_per_sum=False``). Pure PyTorch.
"""
from __future__ import annotations

import torch

__all__ = ["dice_coefficient", "dice_loss"]


def dice_coefficient(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
                     eps_per_sum: bool = True) -> torch.Tensor:
    """``D = 2 Σ p·m / ((Σ p² + eps) + (Σ m² + eps))`` per instance (SOLO Eq. 3, official eps);
    with ``eps_per_sum=False``, ``D = 2 Σ p·m / (Σ p² + Σ m² + eps)`` (RS-Mask R-CNN, eps 1e-5).

    Args:
        pred: (N, ...) mask probabilities in [0, 1] (e.g. sigmoid of the mask logits).
        target: (N, ...) binary (or soft) targets, same shape.
        eps: added to each of the two squared sums (SOLO 0.001 each), or once to their sum.
        eps_per_sum: where eps goes (above).

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
    b = (p * p).sum(dim=1)
    c = (m * m).sum(dim=1)
    denominator = (b + eps) + (c + eps) if eps_per_sum else b + c + eps
    return 2 * a / denominator


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
              eps_per_sum: bool = True) -> torch.Tensor:
    """Per-instance dice loss ``1 − dice_coefficient(pred, target, eps, eps_per_sum)``, (N,)."""
    return 1 - dice_coefficient(pred, target, eps, eps_per_sum)
