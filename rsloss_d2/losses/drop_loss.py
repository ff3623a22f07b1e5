"""DropLoss (Hsieh et al., "DropLoss for Long-Tail Instance Segmentation", AAAI 2021) and EQL v1
(Tan et al., "Equalization Loss for Long-Tailed Object Recognition", CVPR 2020) as the official
GOL repository defines them (``droploss.py`` and ``eql.py`` there).

For n RoIs with labels g_i ∈ {0..C−1} (foreground) or C (background), C classifier columns (no
background logit), tail mask ``T(c) = 1[f(c) < λ]`` (:func:`tail_class_mask`):

    y_ic  = 1[g_i = c]                        fg_i = 1[g_i ≠ C]
    ratio = Σ_i fg_i T(g_i) / Σ_i fg_i        (tail fraction of the foreground RoIs; NaN if none)
    r_ic  = 1[u_ic > ratio] · (1 − fg_i),     u_ic ~ U(0, 1) i.i.d.       (DropLoss only)
    W_ic  = (r_ic + fg_i) · T(c)   (DropLoss)       W_ic = fg_i · T(c)   (EQL v1)
    d_ic  = 1 − W_ic (1 − y_ic)
    L     = loss_weight · Σ_ic BCE_ic · d_ic / n

so negative terms of tail classes are always removed on foreground RoIs, removed on background
RoIs with probability 1 − ratio (DropLoss), and positives are never removed. BCE is the Gumbel BCE
on logits clamped to [−4, 10] (official gradient, see ``gumbel.py``) or BCE-with-logits
("sigmoid"). No clamp of the loss value (unlike GumbelCE).

**No foreground RoI** (official behaviour, kept): ratio = 0/0 = NaN, ``u > NaN`` is False, so
r = 0 and every background negative is kept; the loss is the plain BCE mean, finite.

**Random draws**: ``u`` is one ``torch.rand((n, C), generator=generator)`` tensor over all rows
(only the background rows use it), on the logits' device; pass a ``torch.Generator`` for
reproducible drops. Everything is per call, i.e. per process (per GPU), as officially.
"""
from typing import Optional, Sequence, Tuple

import torch

from .gumbel import binary_cross_entropy_elementwise, compute_dtype

__all__ = ["tail_class_mask", "drop_loss_weights", "drop_loss", "eql_loss"]


def tail_class_mask(
    image_counts: Sequence[float], num_images: float, threshold: float
) -> torch.Tensor:
    """``T(c) = 1[image_count(c) / num_images < threshold]`` (strict), bool (C,).

    GOL v1: ``num_images`` 99,388 (LVIS v1 train images with ≥ 1 annotation), λ = 0.0011
    (815 tail classes); v0.5: 56,740 and λ = 0.00177. A class absent from training (count 0)
    is a tail class.
    """
    if num_images <= 0:
        raise ValueError(f"num_images must be > 0, got {num_images}")
    counts = torch.as_tensor(image_counts, dtype=torch.float64)
    return counts / float(num_images) < threshold


def drop_loss_weights(
    labels: torch.Tensor,
    tail_mask: torch.Tensor,
    random_drop: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets, keep weights and tail ratio of DropLoss (``random_drop``) or EQL (module doc).

    Args:
        labels: (n,) int64 in ``0..C`` (C = background).
        tail_mask: (C,) bool / {0, 1} tail mask T.
        random_drop: True: DropLoss (random drop on background rows); False: EQL v1.
        generator: optional ``torch.Generator`` (on ``labels``' device) for the draws.

    Returns:
        ``targets`` (n, C) fp32 one-hot, ``keep`` (n, C) fp32 d_ic ∈ {0, 1}, ``ratio`` 0-dim
        fp32 (NaN without foreground rows). No host synchronisation.
    """
    num_classes = tail_mask.numel()
    device = labels.device
    tail = tail_mask.to(device=device, dtype=torch.float32)
    fg = (labels != num_classes).to(torch.float32)
    targets = torch.nn.functional.one_hot(labels, num_classes + 1)[:, :num_classes].float()
    tail_of_label = torch.cat([tail, tail.new_zeros(1)])[labels]  # 0 for background rows
    ratio = (tail_of_label * fg).sum() / fg.sum()  # NaN without foreground, as officially
    weight = fg[:, None].expand(-1, num_classes)
    if random_drop:
        u = torch.rand((labels.numel(), num_classes), generator=generator, device=device)
        drop = (u > ratio).to(torch.float32) * (1 - fg[:, None])  # NaN ratio: no drop
        weight = weight + drop
    keep = 1 - weight * tail[None, :] * (1 - targets)
    return targets, keep, ratio


def _dropped_bce(logits, labels, tail_mask, activation, random_drop, generator, loss_weight):
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits (n, C) and labels (n,) expected, got {tuple(logits.shape)}, "
                         f"{tuple(labels.shape)}")
    if tail_mask.numel() != logits.shape[1]:
        raise ValueError(f"tail_mask has {tail_mask.numel()} classes, logits {logits.shape[1]}")
    if logits.shape[0] == 0:
        dtype = compute_dtype(logits)
        return logits.to(dtype).sum() * 0, logits.new_full((), float("nan"), dtype=torch.float32)
    targets, keep, ratio = drop_loss_weights(labels, tail_mask, random_drop, generator)
    bce = binary_cross_entropy_elementwise(logits, targets, activation)
    return loss_weight * (bce * keep).sum() / logits.shape[0], ratio


def drop_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tail_mask: torch.Tensor,
    activation: str = "gumbel",
    generator: Optional[torch.Generator] = None,
    loss_weight: float = 1.0,
    return_ratio: bool = False,
):
    """DropLoss of the GOL repository (``droploss.py``), Gumbel or sigmoid.

    Args:
        logits: (n, C) logits (no background column), any float dtype (computed in fp32, fp64
            inputs in fp64).
        labels: (n,) int64 in ``0..C`` (C = background; drop ignored rows beforehand).
        tail_mask: (C,) tail mask (:func:`tail_class_mask`).
        activation: "gumbel" (logits clamped to [−4, 10]) or "sigmoid".
        generator: optional ``torch.Generator`` for the background drops.
        loss_weight: multiplier (official 1.0).
        return_ratio: also return the tail ratio (0-dim, NaN without foreground).

    Returns:
        0-dim ``Σ BCE · d / n``, fp32 (fp64 for fp64 logits); ``(loss, ratio)`` with
        ``return_ratio``; n = 0 gives a zero attached to ``logits``.
    """
    loss, ratio = _dropped_bce(logits, labels, tail_mask, activation, True, generator,
                               loss_weight)
    return (loss, ratio) if return_ratio else loss


def eql_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tail_mask: torch.Tensor,
    activation: str = "gumbel",
    loss_weight: float = 1.0,
) -> torch.Tensor:
    """EQL (v1) of the GOL repository (``eql.py``): tail negatives removed on
    foreground rows only, no random draw; same arguments and return as :func:`drop_loss`."""
    return _dropped_bce(logits, labels, tail_mask, activation, False, None, loss_weight)[0]
