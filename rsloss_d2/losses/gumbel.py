"""Gumbel activation and Gumbel cross-entropy (Alexandridis et al., "Long-tailed Instance
Segmentation using Gumbel Optimized Loss", ECCV 2022, Sec. 3; ``gumbel_ce.py`` of the official
GOL repository).

    p(x)   = exp(−exp(−x))                      Gumbel (max) CDF, paper Eq. (5)
    dp/dx  = exp(−x) · p(x)
    BCE    = −[y log p + (1 − y) log(1 − p)]    paper Eq. (7), on logits clamped to [−4, 10]

The official ``GumbelCE`` applies ``F.binary_cross_entropy`` to the probabilities, which autocast
refuses and which loses precision near p = 1. Here the same loss is written in log space,
``log p = −e^{−x}`` and ``log(1 − p) = log(−expm1(−e^{−x}))``, in fp32 for fp16 / bf16 / fp32
inputs (fp64 inputs stay fp64, so ``torch.autograd.gradcheck`` applies): no NaN / Inf for any
finite logit (the clamp bounds ``e^{−x}`` by e⁴ ≈ 54.6).

**Gradient: the official one is reproduced.** PyTorch's BCE backward divides by
``max(p (1 − p), 1e-12)``; for clamped logits in [−4, −3.32) p < 1e-12, so a positive there gets
``(p − 1) p e^{−x} / 1e-12`` (−0.14 at x = −3.5) instead of the analytic −e^{−x} (−33.1). This
module's backward uses exactly that formula; everywhere else it equals the analytic gradient
``(p − y) e^{−x} / (1 − p)``. Outside [−4, 10] the clamp makes the gradient zero (official).
"""
import torch
import torch.nn.functional as F

__all__ = [
    "GUMBEL_LOGIT_RANGE",
    "gumbel_activation",
    "gumbel_binary_cross_entropy",
    "gumbel_cross_entropy",
    "binary_cross_entropy_elementwise",
]

GUMBEL_LOGIT_RANGE = (-4.0, 10.0)  # official logit clamp of GumbelCE / DropLoss / EQL
_BCE_EPS = 1e-12  # PyTorch's binary_cross_entropy backward: grad / max(p (1 − p), 1e-12)
_LOSS_MAX = 20.0  # official GumbelCE clamps the reduced loss to [0, 20]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the losses of this file compute in: float64 stays float64, everything else
    (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gumbel_activation(x: torch.Tensor) -> torch.Tensor:
    """Gumbel scores ``exp(−exp(−x))`` (GOL paper Eq. 5), no clamping; same shape and dtype as
    ``x``."""
    return torch.exp(-torch.exp(-x))


class _GumbelBCE(torch.autograd.Function):
    """Element-wise BCE of ``p = exp(−e^{−x})`` in log space, official (clamped) backward.

    Inputs: fp32 / fp64 logits ``x`` (clamped here to [−4, 10]) and targets ``y`` of the same shape
    (targets get no grad). The clamp's gradient mask is inclusive (subgradient 1 at −4 and 10, as
    torch 1.7's ``clamp`` backward used by the official code; torch ≥ 2 gives 0 there).
    """

    @staticmethod
    def forward(ctx, x, y):
        lo, hi = GUMBEL_LOGIT_RANGE
        inside = (x >= lo) & (x <= hi)
        u = torch.exp(-x.clamp(lo, hi))
        log_p = -u
        log_1mp = torch.log(-torch.expm1(-u))
        ctx.save_for_backward(u, y, inside)
        return -(y * log_p + (1 - y) * log_1mp)

    @staticmethod
    def backward(ctx, grad):
        u, y, inside = ctx.saved_tensors
        p = torch.exp(-u)
        one_minus_p = -torch.expm1(-u)
        # official: dL/dp = (p − y) / max(p (1 − p), 1e-12), dp/dx = p e^{−x}
        denom = (p * one_minus_p).clamp(min=_BCE_EPS)
        grad_x = grad * (p - y) * p * u / denom
        return torch.where(inside, grad_x, torch.zeros_like(grad_x)), None


def gumbel_binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Element-wise Gumbel BCE on logits clamped to [−4, 10] (no reduction).

    Args:
        logits: (R, K) (any shape) logits, any float dtype; computed in fp32 even under autocast
            (fp64 in fp64).
        targets: same shape, values in [0, 1] (one-hot in the detectors).

    Returns:
        tensor of ``logits``' shape, fp32 (fp64 for fp64 logits); gradient as the official
        (module docstring).
    """
    dtype = compute_dtype(logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _GumbelBCE.apply(logits.to(dtype), targets.detach().to(dtype))


def binary_cross_entropy_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, activation: str = "gumbel"
) -> torch.Tensor:
    """Element-wise BCE for ``activation`` "gumbel" (clamped, as above) or "sigmoid" (BCE with
    logits on the raw logits, no clamp; the ``use_classif='sigmoid'`` variants); fp32 (fp64 for
    fp64 logits)."""
    if activation == "gumbel":
        return gumbel_binary_cross_entropy(logits, targets)
    if activation == "sigmoid":
        dtype = compute_dtype(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.binary_cross_entropy_with_logits(
                logits.to(dtype), targets.detach().to(dtype), reduction="none"
            )
    raise ValueError(f"activation must be 'gumbel' or 'sigmoid', got {activation!r}")


def gumbel_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor = None,
    avg_factor: float = None,
) -> torch.Tensor:
    """Official ``GumbelCE`` (GOL paper Eq. 7; ``gumbel_ce.py``): clamp, element-wise Gumbel
    BCE, weights, reduce, clamp.

    ``L = clamp(Σ_{i,k} w_ik · BCE(p(clamp(x_ik, −4, 10)), y_ik) / avg_factor, 0, 20)``;
    with ``avg_factor=None`` the sum is replaced by the mean over all R·K elements (weights
    multiply but do not normalise, as mmdet). Above 20 the loss is constant (zero gradient).

    Args:
        logits: (R, K) logits (the detectors' K = C + 1 columns, background last).
        targets: (R, K) one-hot (or soft) targets.
        weight: optional element weights, (R, K) or broadcastable to it (e.g. (R, 1)).
        avg_factor: optional normaliser (the box head passes the number of sampled RoIs).

    Returns:
        0-dim loss, fp32 (fp64 for fp64 logits). No element (R·K = 0) gives a zero attached to
        ``logits``.
        Gradient: the official one (module docstring), reproduced in [−4, −3.32).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if logits.numel() == 0:
        return logits.to(compute_dtype(logits)).sum() * 0
    loss = gumbel_binary_cross_entropy(logits, targets)
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    loss = loss.mean() if avg_factor is None else loss.sum() / avg_factor
    return loss.clamp(0.0, _LOSS_MAX)
