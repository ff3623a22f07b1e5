"""The compiled CPU path of RS / aLRP / AP Loss, and which path the losses take.

``csrc/ranking_losses.c`` computes each loss's values and its whole identity-update gradient in
one C call (same algorithm as the PyTorch path of :mod:`._step_sums`, accumulated in float64): on
the CPU the PyTorch path is ~70 small operations whose dispatch costs more than the arithmetic
at the sizes detectors use. The file is compiled on first use with the system C compiler
(``$CC``, default ``cc``) into the cache folder (``$RSLOSS_D2_CACHE_DIR``, else
``$XDG_CACHE_HOME/rsloss_d2``, else ``~/.cache/rsloss_d2``; sub-folder ``kernels``), named by
the source's hash (the folder keeps the :data:`KEEP_BUILDS` most recently built versions), and
loaded with ``ctypes``: no PyTorch headers, ~1 s to build. Built with
OpenMP where the compiler has it, its passes over all logits use ``torch.get_num_threads()``
threads.

Which path a loss call takes (:func:`set_implementation`, config key
``MODEL.RANK_LOSS.IMPLEMENTATION``):

* ``"auto"`` (default): the compiled path for CPU tensors when the library builds and loads,
  else the PyTorch ("eager") path; CUDA tensors always take the eager path;
* ``"eager"``: the PyTorch path everywhere (the reference the compiled path is tested against);
* ``"compiled"``: like ``"auto"`` but an error if the library cannot be built.

The compiled path reads nothing from a device (CPU memory only) and dispatches no PyTorch
operation besides the output allocations and the backward's product.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Optional, Tuple

import torch

__all__ = [
    "IMPLEMENTATIONS",
    "set_implementation",
    "get_implementation",
    "library",
    "library_for",
    "build_seconds",
    "time_build",
    "get_error",
    "rank_sort",
    "alrp",
    "ap",
]

IMPLEMENTATIONS = ("auto", "eager", "compiled")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "ranking_losses.c")
# libraries of other source versions (other checkouts, older releases) kept beside a new build;
# an older one is rebuilt in ~1 s when needed again
KEEP_BUILDS = 4

logger = logging.getLogger(__name__)

_state = {"implementation": "auto", "library": None, "tried": False, "error": None,
          "build_seconds": None}
_lock = threading.Lock()


def set_implementation(name: str) -> None:
    """Select the path of every later RS / aLRP / AP Loss call in this process.

    Raises:
        ValueError: ``name`` is not one of :data:`IMPLEMENTATIONS`.
        RuntimeError: ``"compiled"`` and the library cannot be built or loaded (the message
            gives the compiler's error).
    """
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"ranking-loss implementation must be one of {IMPLEMENTATIONS}, "
                         f"got {name!r}")
    if name == "compiled" and library() is None:
        raise RuntimeError(f"ranking-loss implementation 'compiled': {_state['error']}")
    _state["implementation"] = name


def get_implementation() -> str:
    return _state["implementation"]


def _cache_dir() -> str:
    root = os.environ.get("RSLOSS_D2_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "rsloss_d2")
    return os.path.join(root, "kernels")


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc) or shutil.which("gcc")


def _build(folder: Optional[str] = None) -> ctypes.CDLL:
    """Load the library from ``folder`` (default: the cache folder), building it there first
    if it is not there yet."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found ($CC = {os.environ.get('CC', 'cc')!r}, gcc)")
    flags = ["-O3", "-std=c99", "-fPIC", "-shared"]
    key = hashlib.sha256(source + " ".join([cc] + flags).encode()).hexdigest()[:16]
    folder = folder or _cache_dir()
    path = os.path.join(folder, f"ranking_losses-{key}.so")
    if os.path.exists(path):
        try:
            return _declare(ctypes.CDLL(path))
        except OSError:  # a damaged (or just pruned) file in the cache: built again below
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        # with OpenMP where the compiler has it, else one thread
        for extra in (["-fopenmp"], []):
            proc = subprocess.run([cc, *flags, *extra, SOURCE, "-o", tmp, "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            raise RuntimeError(f"{cc} failed to build {SOURCE}: {proc.stderr.strip()}")
        _state["build_seconds"] = time.perf_counter() - t0
        os.replace(tmp, path)  # atomic: processes building at once all get a whole file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    lib = _declare(ctypes.CDLL(path))
    _prune(folder)
    return lib


def _prune(folder: str) -> None:
    """Remove all but the :data:`KEEP_BUILDS` most recently built libraries of ``folder`` (a
    process that has one loaded keeps its mapping)."""
    builds = []
    for name in os.listdir(folder):
        if name.startswith("ranking_losses-") and name.endswith(".so"):
            with contextlib.suppress(FileNotFoundError):
                builds.append((os.path.getmtime(os.path.join(folder, name)), name))
    for _, name in sorted(builds, reverse=True)[KEEP_BUILDS:]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The argument and return types of the library's three functions."""
    vp, i64, dbl, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    i64p = ctypes.POINTER(ctypes.c_int64)
    lib.rs_loss.argtypes = [vp, vp, i64, cint, dbl, dbl, cint, vp, vp, vp, i64p]
    lib.alrp_loss.argtypes = [vp, vp, vp, i64, i64, cint, dbl, dbl, cint, vp, vp, vp, vp, i64p]
    lib.ap_loss.argtypes = [vp, vp, i64, cint, dbl, cint, vp, vp, i64p]
    for fn in (lib.rs_loss, lib.alrp_loss, lib.ap_loss):
        fn.restype = cint
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The compiled library, built on the first call of the process; None if it cannot be built
    (the reason is logged once)."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["library"] = _build()
                except (OSError, RuntimeError) as e:
                    _state["error"] = str(e)
                    logger.warning("ranking losses: compiled CPU path unavailable, using the "
                                   "PyTorch path (%s)", e)
                _state["tried"] = True
    return _state["library"]


def time_build() -> float:
    """Seconds to build the library from scratch (in a temporary folder; the cache and this
    process's library are left alone): the first call's extra cost on a new machine."""
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        _build(folder)
        return time.perf_counter() - t0


def get_error() -> Optional[str]:
    """Why the library could not be built or loaded (None if it was, or was not tried yet)."""
    return _state["error"]


def build_seconds() -> Optional[float]:
    """Seconds this process spent compiling the library (None: loaded from the cache)."""
    return _state["build_seconds"]


def library_for(s: torch.Tensor) -> Optional[ctypes.CDLL]:
    """The library if a loss on ``s`` takes the compiled path, else None."""
    if _state["implementation"] == "eager" or s.device.type != "cpu":
        return None
    lib = library()
    if lib is None and _state["implementation"] == "compiled":
        raise RuntimeError(f"ranking-loss implementation 'compiled': {_state['error']}")
    return lib


_RC_MESSAGES = {3: "out of memory"}


def _args(s: torch.Tensor, t: torch.Tensor):
    s = s.contiguous()
    t = t.to(s.dtype).contiguous()
    return s, t, s.dtype == torch.float64


def _check(name: str, rc: int, num: int, n_loc: int = 0) -> bool:
    """False for non-finite logits (the caller decides: raise, or the eager path's NaN)."""
    if rc == 1:
        return False
    if rc == 2:
        raise ValueError(f"{name}: loc_errors has {n_loc} entries for {num} positives")
    if rc:
        raise RuntimeError(f"{name}: {_RC_MESSAGES.get(rc, f'error {rc}')}")
    return True


def rank_sort(lib, s: torch.Tensor, t: torch.Tensor, delta: float, eps: float
              ) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(loss_rank, loss_sort, grad)`` of RS Loss on flat ``s`` (M,), ``t`` (M,); None when a
    logit is NaN/Inf."""
    s, t, f64 = _args(s, t)
    grad, num = torch.empty_like(s), ctypes.c_int64(0)
    loss_rank, loss_sort = s.new_empty(()), s.new_empty(())
    rc = lib.rs_loss(s.data_ptr(), t.data_ptr(), s.numel(), int(f64), delta, eps,
                     torch.get_num_threads(), grad.data_ptr(), loss_rank.data_ptr(), loss_sort.data_ptr(),
                     ctypes.byref(num))
    if not _check("rank_sort_loss", rc, num.value):
        return None
    return loss_rank, loss_sort, grad


def alrp(lib, s: torch.Tensor, t: torch.Tensor, loc: torch.Tensor, delta: float, eps: float):
    """``(loss_cls, rank (P,), order (P,), grad)`` of aLRP Loss; None when a logit is NaN/Inf."""
    s, t, f64 = _args(s, t)
    loc = loc.to(s.dtype).contiguous()
    grad, out, num = torch.empty_like(s), s.new_empty(()), ctypes.c_int64(0)
    # one entry per positive: the C code checks that count before it writes rank / order
    rank = s.new_empty(loc.numel())
    order = torch.empty(loc.numel(), dtype=torch.int64)
    rc = lib.alrp_loss(s.data_ptr(), t.data_ptr(), loc.data_ptr(), loc.numel(), s.numel(),
                       int(f64), delta, eps, torch.get_num_threads(), grad.data_ptr(), out.data_ptr(), rank.data_ptr(),
                       order.data_ptr(), ctypes.byref(num))
    if not _check("alrp_loss", rc, num.value, loc.numel()):
        return None
    return out, rank, order, grad


def ap(lib, s: torch.Tensor, t: torch.Tensor, delta: float):
    """``(loss, grad)`` of AP Loss; None when a logit is NaN/Inf."""
    s, t, f64 = _args(s, t)
    grad, out, num = torch.empty_like(s), s.new_empty(()), ctypes.c_int64(0)
    rc = lib.ap_loss(s.data_ptr(), t.data_ptr(), s.numel(), int(f64), delta,
                     torch.get_num_threads(), grad.data_ptr(), out.data_ptr(), ctypes.byref(num))
    if not _check("ap_loss", rc, num.value):
        return None
    return out, grad
