"""Seeded synthetic inputs of the ranking losses, for ``tools/benchmarks/benchmark_losses.py``
and the cost tests (no Detectron2)."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["random_ranking_inputs"]


def random_ranking_inputs(p: int, n: int, generator: torch.Generator
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P positives among M = P + N flat float32 logits, drawn from ``generator``.

    Negatives ~ N(−1, 1.5²), positives ~ N(1, 1.5²) at random positions.

    Returns:
        ``(logits, binary, ious)``, each (M,): ``binary`` the aLRP / AP targets (1 positive,
        0 negative), ``ious`` the RS targets (IoU ~ U(0.05, 1) of a positive, 0 negative).
    """
    m = p + n
    logits = torch.randn(m, generator=generator) * 1.5 - 1.0
    pos = torch.randperm(m, generator=generator)[:p]
    logits[pos] += 2.0
    binary = torch.zeros(m)
    binary[pos] = 1.0
    ious = torch.zeros(m)
    ious[pos] = torch.rand(p, generator=generator) * 0.95 + 0.05
    return logits, binary, ious
