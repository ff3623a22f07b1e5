"""Seeded random inputs for the ranking-loss tests (float64, small enough for the slow loop)."""
from __future__ import annotations

import torch


def random_case(seed: int, binary: bool, max_len: int = 400):
    """Logits/targets with ties, ignored entries and varied sizes.

    Returns ``(logits, targets, delta)``; ``logits`` float64 of shape (M // C, C) or (M,).
    ``binary``: targets in {1, 0, −1} (aLRP/AP); else RS targets (IoU in (0, 1], 0, −1).
    """
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(2, max_len, (), generator=g))
    scale = [0.5, 1.0, 2.0, 4.0][seed % 4]
    logits = torch.randn(m, generator=g, dtype=torch.float64) * scale
    if seed % 3 == 0:  # coarse grid: many exact ties and differences of exactly ±δ
        logits = torch.round(logits * 4) / 4
    r = torch.rand(m, generator=g)
    pos_frac = [0.05, 0.2, 0.5, 0.9][(seed // 4) % 4]
    targets = torch.zeros(m, dtype=torch.float64)
    pos = r < pos_frac
    if binary:
        targets[pos] = 1
    else:
        y = torch.rand(m, generator=g, dtype=torch.float64).clamp_min(0.02)
        if seed % 2:  # tied sorting targets
            y = torch.round(y * 4).clamp_min(1) / 4
        targets[pos] = y[pos]
    targets[r > 0.92] = -1
    if not pos.any():
        targets[0] = 1 if binary else 0.7
    if binary:
        delta = [1.0, 0.5, 0.25, 2.0][(seed // 2) % 4]
    else:
        delta = [0.5, 0.0, 1.0, 0.25, 0.5][seed % 5]
    if m % 2 == 0 and seed % 5 == 1:
        logits = logits.reshape(2, m // 2)
        targets = targets.reshape(2, m // 2)
    return logits, targets, delta


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().reshape(-1).double() - b.detach().reshape(-1).double()).abs().max())


# One small input for hand-checked worked examples of the three losses.
EXAMPLE_LOGITS = [2.0, -1.0, 0.9, 0.8, -0.2, 1.1, 1.0, -3.0]
EXAMPLE_RS_TARGETS = [0.9, 0, 0, 0.6, -1, 0.75, 0, 0]
EXAMPLE_BINARY_TARGETS = [1, 0, 0, 1, -1, 1, 0, 0]
EXAMPLE_LOC_ERRORS = [0.2, 0.5, 0.3]
