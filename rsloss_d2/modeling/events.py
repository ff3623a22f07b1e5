"""Logging of head statistics to Detectron2's EventStorage with one host read per call.

Several processes: the logged value of every statistic is its **mean over the processes** (one
``all_reduce`` per call), so ``metrics.json`` / TensorBoard show the same numbers whichever
process writes them.
"""
import zlib
from typing import Dict, Optional, Union

import torch
import torch.distributed as dist
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["put_scalars"]

Scalar = Optional[Union[torch.Tensor, float, int]]


def put_scalars(prefix: str, values: Dict[str, Scalar]) -> None:
    """``storage.put_scalar(prefix + name, value)`` for every entry.

    Values are 0-dim tensors (any device), Python numbers, or ``None`` = not defined on this
    process in this iteration (e.g. a mean IoU of the positives when there are none); a ``None``
    is not logged (one process), or left out of the mean (several processes; not logged if no
    process defines it).

    One process: all tensor values are stacked and read back together — one device-to-host copy
    instead of one ``.item()`` sync per statistic.

    Several processes (``torch.distributed`` initialised, world size > 1): the values and their
    "defined" flags are stacked into one float64 tensor (Python numbers join it with one
    host-to-device copy), summed with **one** ``all_reduce`` and read back with one copy; the
    logged value is the mean over the processes that define it. Every process must therefore call
    ``put_scalars`` the same number of times, with the same ``prefix`` and names in the same
    order — callers pass ``None`` rather than leaving a name out. A mismatch of the names is
    detected (a checksum travels with the values) and raises ``RuntimeError``.
    """
    storage = get_event_storage()
    if comm.get_world_size() > 1:
        read = _all_reduce_mean(prefix, values)
    else:
        read = _read_local(values)
    for name, value in read.items():
        storage.put_scalar(prefix + name, value)


def _read_local(values: Dict[str, Scalar]) -> Dict[str, float]:
    names = [k for k, v in values.items() if torch.is_tensor(v)]
    read = {}
    if names:
        stacked = torch.stack([values[k].detach().reshape(()).to(torch.float32) for k in names])
        read = dict(zip(names, stacked.tolist()))
    return {k: read.get(k, v) for k, v in values.items() if v is not None}


def _all_reduce_mean(prefix: str, values: Dict[str, Scalar]) -> Dict[str, float]:
    names = list(values)
    k = len(names)
    device = next((v.device for v in values.values() if torch.is_tensor(v)), None)
    if device is None:  # only host values: the backend's device
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
    checksum = float(zlib.crc32("\0".join([prefix] + names).encode()))
    # host part: Python values (0 where a tensor or None), the defined flags, the checksum
    host = [0.0 if (v is None or torch.is_tensor(v)) else float(v) for v in values.values()]
    host += [0.0 if v is None else 1.0 for v in values.values()] + [checksum]
    host_t = torch.tensor(host, dtype=torch.float64).to(device)
    parts = [v.detach().reshape(()).to(device=device, dtype=torch.float64)
             if torch.is_tensor(v) else host_t[i] for i, v in enumerate(values.values())]
    flat = torch.cat([torch.stack(parts), host_t[k:]]) if k else host_t[k:]
    dist.all_reduce(flat)
    out = flat.tolist()
    world = comm.get_world_size()
    if out[-1] != checksum * world:
        raise RuntimeError(f"put_scalars({prefix!r}): the processes logged different names "
                           f"(this process: {names}); every process must pass the same names, "
                           "None for a value it does not define")
    sums, counts = out[:k], out[k:2 * k]
    return {n: s / c for n, s, c in zip(names, sums, counts) if c > 0}
