"""Logging of head statistics to Detectron2's EventStorage with one host read per call."""
from typing import Dict, Union

import torch
from detectron2.utils.events import get_event_storage

__all__ = ["put_scalars"]


def put_scalars(prefix: str, values: Dict[str, Union[torch.Tensor, float, int]]) -> None:
    """``storage.put_scalar(prefix + name, value)`` for every entry.

    All tensor values (0-dim, any device) are stacked and read back together: one device-to-host
    copy instead of one ``.item()`` sync per statistic.
    """
    storage = get_event_storage()
    names = [k for k, v in values.items() if torch.is_tensor(v)]
    read = {}
    if names:
        stacked = torch.stack([values[k].detach().reshape(()).to(torch.float32) for k in names])
        read = dict(zip(names, stacked.tolist()))
    for name, value in values.items():
        storage.put_scalar(prefix + name, read.get(name, value))
