"""Small host → device copies that do not stall the host.

``torch.tensor(values, device="cuda")`` (and ``x.new_tensor(values)`` on a CUDA tensor) copies
from pageable host memory and waits for the GPU's stream to drain: a host synchronisation in
the middle of the forward pass, counted by ``tools/diagnostics/count_host_syncs.py``. :func:`to_device`
builds the tensor on the host, pins it and copies it with ``non_blocking=True``, which queues
the copy on the current stream without waiting (PyTorch's caching host allocator keeps the
pinned block alive until the copy has run). On CPU it is a plain ``torch.as_tensor``.
"""
from typing import Optional

import torch

__all__ = ["to_device"]


def to_device(values, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.as_tensor(values, dtype=dtype)`` on ``device``, without a host sync on CUDA.

    Args:
        values: numbers, (nested) lists / tuples of numbers, or a CPU tensor.
        device: target device (``torch.device`` or string).
        dtype: optional dtype (default: inferred, as ``torch.as_tensor``).
    """
    device = torch.device(device)
    host = torch.as_tensor(values, dtype=dtype, device="cpu")
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
