"""Count what a call dispatches: top-level ATen operations and host reads (CPU profiling).

Used by the tests that pin the cost of the ranking losses and by
``tools/benchmarks/benchmark_losses.py``. No Detectron2.

* **Operations**: the ``aten::`` events of ``torch.profiler`` that have no ``aten::`` parent
  (what a GPU launches: one kernel or more per such operation), not counting views and metadata
  (``view``, ``reshape``, ``slice``, ``select``, ``expand``, ``empty``, ``detach``, ``to``, ...)
  unless they launched a copy (e.g. a ``to`` that converts the dtype counts).
* **Host reads**: operations that make the host wait for the device when the tensors are on a
  GPU — ``item`` / ``tolist`` / ``bool()`` / ``int()`` / ``float()`` of a tensor and the operations
  whose output size depends on the data (``nonzero``, ``masked_select``, ``unique``, ``bincount``,
  boolean-mask indexing, ...), counted by a ``TorchDispatchMode`` / ``TorchFunctionMode``.
"""
from __future__ import annotations

import collections
from typing import Callable, Counter, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_ops", "count_host_reads", "count_ops_and_reads", "METADATA_OPS", "HOST_READ_OPS"]

METADATA_OPS = frozenset(
    "aten::" + name for name in (
        "view", "reshape", "_reshape_alias", "_unsafe_view", "view_as", "view_as_real",
        "slice", "select", "narrow", "expand", "expand_as", "as_strided", "unsqueeze",
        "squeeze", "t", "transpose", "permute", "numpy_T", "mT", "flatten", "unflatten",
        "split", "split_with_sizes", "unbind", "chunk", "alias", "diagonal", "empty",
        "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "detach_",
        "lift", "lift_fresh", "to", "contiguous", "resolve_conj", "resolve_neg", "result_type",
    ))

# ATen operations that read device data back to the host (sizes or values).
HOST_READ_OPS = frozenset((
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
    "aten::_unique2", "aten::unique_consecutive", "aten::bincount", "aten::repeat_interleave",
    "aten::_assert_async", "aten::is_nonzero", "aten::equal", "aten::allclose",
))
_HOST_READ_METHODS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy")


def _launched(event) -> bool:
    if event.name not in METADATA_OPS:
        return True
    return any(_launched(child) for child in event.cpu_children
               if child.name.startswith("aten::"))


def count_ops(fn: Callable[[], object]) -> Counter:
    """Top-level non-metadata ATen operations of one call of ``fn`` (run once before, untimed,
    so that one-time caches are not counted), by name."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = []
    for event in prof.profiler.function_events:
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None and _launched(event):
            names.append(event.name)
    return collections.Counter(names)


class _ReadCounter(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = "aten::" + func._schema.name.split("::", 1)[-1]
        if name in HOST_READ_OPS:
            self.counts[name] += 1
        elif name == "aten::index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 else ())):
            self.counts["aten::index (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))


class _MethodCounter(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("tolist", "numpy") and args and isinstance(args[0], torch.Tensor):
            self.counts["Tensor." + name] += 1  # no ATen operation on the CPU
        return func(*args, **(kwargs or {}))


def count_host_reads(fn: Callable[[], object]) -> Counter:
    """Host reads of one call of ``fn``, by operation (see the module docstring)."""
    fn()
    counts: Counter = collections.Counter()
    with _MethodCounter(counts), _ReadCounter(counts):
        fn()
    return counts


def count_ops_and_reads(fn: Callable[[], object]) -> Tuple[int, int]:
    """``(operations, host reads)`` of one call of ``fn``."""
    return sum(count_ops(fn).values()), sum(count_host_reads(fn).values())
