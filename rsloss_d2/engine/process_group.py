"""Leaving the process group that Detectron2's `launch` joined.

Detectron2's `launch` initialises the process group and calls the main function, but never
destroys the group. A process that exits with its gloo group still alive tears it down during
interpreter shutdown; if another process (rank 0, which hosts the TCP store) has already exited,
that teardown can abort the process (``terminate called without an active exception``, SIGABRT),
so a run that trained and saved everything ends with a non-zero exit code. Every process therefore
waits for the others, then destroys its group before returning.
"""
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["leave_process_group"]


def leave_process_group():
    """Barrier (Detectron2's ``comm.synchronize``, which gives NCCL the process's device), then
    ``destroy_process_group``; nothing when no group is initialised.

    Call it only on the success path: after an error on one process the others would wait in the
    barrier until the group's timeout.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    comm.synchronize()
    dist.destroy_process_group()
