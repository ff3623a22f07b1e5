"""Matrix NMS of SOLOv2 (Wang et al., NeurIPS 2020, Sec. 4 and Fig. 4), one batched computation.

SOLOv2 Sec. 3.3 (official ``mmdet/core/post_processing/matrix_nms.py`` of the SOLO repository).
Memory is O(N·H·W + N²) for N masks of H×W: the caller bounds N by ``nms_pre`` and H×W by the
mask resolution (the SOLOv2 head runs it on stride-4 masks of at most ``nms_pre`` candidates).
"""
from __future__ import annotations

import torch

__all__ = ["matrix_nms"]


def matrix_nms(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
) -> torch.Tensor:
    """Decayed scores of Matrix NMS (paper Eq. 3–4, official semantics).

    For masks sorted by descending score, with ``D_ij = IoU_ij · 1[c_i = c_j]`` for i < j (else 0)
    and the compensation ``comp_i = max_k D_ki`` (largest IoU of mask i with a higher-scored mask
    of its class):

    * gaussian: ``decay_j = min_i exp(−σ·D_ij²) / exp(−σ·comp_i²)``
    * linear:   ``decay_j = min_i (1 − D_ij) / (1 − comp_i)``

    and the new score is ``s_j · decay_j``. The min runs over all i (the official code takes it
    over the whole column), so rows with D_ij = 0 contribute ``1 / f(comp_i) ≥ 1``.

    Args:
        masks: (N, H, W) bool or {0, 1} float binary masks.
        labels: (N,) int64 class labels.
        scores: (N,) float scores, sorted in descending order.
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: σ of the gaussian kernel (official 2.0; it multiplies IoU², not divides).

    Returns:
        (N,) decayed scores, same order and dtype as ``scores``; an empty tensor for N = 0.

    IoUs are computed in float32 (float64 masks stay float64), as the official ``.float()``.
    Two empty masks (official 0/0 = NaN) get IoU 0; under the linear kernel a compensation of 1
    (identical same-class masks, official (1 − 1)/(1 − 1) = NaN) is clamped so the decay is 0
    where D_ij = 1 and finite elsewhere.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    n = scores.shape[0]
    if masks.shape[0] != n or labels.shape[0] != n:
        raise ValueError(
            f"matrix_nms: {masks.shape[0]} masks, {labels.shape[0]} labels, {n} scores"
        )
    if n == 0:
        return scores.new_zeros((0,))
    dtype = torch.float64 if masks.dtype == torch.float64 else torch.float32
    flat = masks.reshape(n, -1).to(dtype)
    inter = flat @ flat.t()  # (N, N) pixel intersections I = B Bᵀ
    areas = flat.sum(dim=1)
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    same = labels[:, None] == labels[None, :]
    upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    decay_iou = iou * (same & upper).to(dtype)  # D_ij, only i < j with the same class
    comp = decay_iou.max(dim=0).values[:, None]  # comp_i as a column: (N, 1)
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * comp**2)
    else:
        ratio = (1 - decay_iou) / (1 - comp).clamp(min=1e-12)
    decay = ratio.min(dim=0).values
    return scores * decay.to(scores.dtype)
