#!/usr/bin/env python
"""Benchmark the ranking losses against the official per-positive loop and the focal loss.

Prints ONE table, every cell measured in this run, side by side:

* ``loop``  — the official algorithm (a Python loop over the positives comparing each with every
  relevant negative, :mod:`rsloss_d2.losses.reference`), in float32;
* ``ours``  — :func:`rsloss_d2.losses.rank_sort_loss` / ``alrp_loss`` / ``ap_loss`` as a
  training calls them: on the CPU their compiled path (:mod:`rsloss_d2.losses.compiled`, one C
  call), on a GPU the PyTorch path;
* ``eager`` — the same losses forced onto their PyTorch path (``MODEL.RANK_LOSS.IMPLEMENTATION
  eager``; on a GPU the two columns are the same path);
* ``focal`` — ``torchvision.ops.sigmoid_focal_loss`` (sum / |P|) on the same logits: one
  elementwise pass, the floor for any classification loss.

Times are forward + backward in milliseconds (median of ``--repeats`` runs after one warm-up; the
loop: one run). Inputs: M = P + N flat float32 logits, negatives ~ N(−1, 1.5²), positives
~ N(1, 1.5²) at random positions (so nearly every negative is "relevant" for the loop); RS targets
IoU ~ U(0.05, 1), aLRP/AP/focal binary; aLRP localisation errors ~ U(0, 1).

``--skip-loop-above K``: when P > K the loop runs only over the first K positives (in its own
ascending order) and its time is extrapolated × P/K (each loop iteration costs O(N + P), so the
time is linear in the number of iterations); such cells are marked ``~`` ("estimated").

Peak memory (MiB) is the extra memory of one forward + backward above what the inputs already
hold, measured in a separate, untimed run:
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  allocation before the call;
* CPU: the process's peak resident set size, ``VmHWM`` of ``/proc/self/status``, reset before the
  call by writing 5 to ``/proc/self/clear_refs``, minus ``VmRSS`` before the call, after
  ``malloc_trim(0)`` has returned the free heap pages to the OS (so memory that malloc reuses is
  counted when it is touched again). ``n/a`` where ``/proc`` does not allow it. (tracemalloc
  does not see torch's allocations.) Granularity: pages; small inputs may show ~0.
The loop's memory is measured over its first 20 iterations: its temporaries do not grow with
the number of iterations.

The time to build the compiled library from scratch (the first call's extra cost on a machine
that has not built it yet) is printed above the table.

``ops`` / ``reads``: operations one forward + backward of ``ours`` dispatches (top-level ATen
operations of torch.profiler on the CPU, views and metadata not counted) and its host reads
(``item``, data-dependent sizes such as ``nonzero``), :mod:`rsloss_d2.losses.op_count`; counted on
the CPU, with the path of the row's device; ``eager ops``: the PyTorch path on the CPU (inputs
of ``rsloss_d2.losses._step_sums.GRID_MIN_POINTS`` logits or more use the grid); ``GPU ops`` /
``GPU reads``: the PyTorch path with the searchsorted binning a GPU runs. ``focal ops``: the count for
the focal loss.

The machine may be shared: times are noisy, the ratios measured side by side less so.
``--clock cpu`` times with the process's CPU time (all threads summed) instead of the wall clock:
on a machine whose cores other jobs keep busy it measures the work of each call rather than the
wait for a core (CPU device only).

Usage::

    python tools/benchmarks/benchmark_losses.py [--losses rs,alrp,ap] [--repeats 5]
        [--skip-loop-above 1000] [--devices cpu,cuda] [--threads N] [--sizes 100x1e4,...]
        [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torchvision.ops import sigmoid_focal_loss

import rsloss_d2.losses._step_sums as step_sums
from rsloss_d2.losses import alrp_loss, ap_loss, compiled, rank_sort_loss
from rsloss_d2.losses.op_count import count_host_reads, count_ops
from rsloss_d2.losses.reference import (
    alrp_loss_reference,
    ap_loss_reference,
    rank_sort_loss_reference,
)
from rsloss_d2.losses.synthetic import random_ranking_inputs

DEFAULT_SIZES = "100x1e4,1000x1e5,1000x1e6,5000x1e6"


# ----------------------------------------------------------------------------- memory probes
def _malloc_trim() -> None:
    """Give free heap pages back to the OS so that their reuse shows in the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _read_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Extra peak memory of one call of ``fn`` (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _malloc_trim()
    before = _read_status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        return None
    fn()
    peak = _read_status_kib("VmHWM")
    return None if peak is None else max(peak - before, 0) / 1024


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def time_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = CLOCK()
        fn()
        _sync(device)
        times.append((CLOCK() - start) * 1e3)
    return statistics.median(times)


# ----------------------------------------------------------------------------- inputs
def make_inputs(p: int, n: int, device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits, binary, ious = random_ranking_inputs(p, n, g)
    loc = torch.rand(p, generator=g)
    return {k: v.to(device) for k, v in
            dict(logits=logits, binary=binary, ious=ious, loc=loc).items()}


def ours_fn(loss: str, x: Dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        logits = x["logits"].detach().requires_grad_(True)
        if loss == "rs":
            a, b = rank_sort_loss(logits, x["ious"])
            (a + b).backward()
        elif loss == "alrp":
            a, _ = alrp_loss(logits, x["binary"], x["loc"])
            a.backward()
        else:
            ap_loss(logits, x["binary"]).backward()
    return run


def loop_fn(loss: str, x: Dict[str, torch.Tensor], max_positives: Optional[int]
            ) -> Callable[[], None]:
    def run() -> None:
        logits = x["logits"].detach()
        if loss == "rs":
            out = rank_sort_loss_reference(logits, x["ious"], max_positives=max_positives)
        elif loss == "alrp":
            out = alrp_loss_reference(logits, x["binary"], x["loc"], max_positives=max_positives)
        else:
            out = ap_loss_reference(logits, x["binary"], max_positives=max_positives)
        out["grad"].mul(1.0)  # the official backward: stored gradient × upstream gradient
    return run


def focal_fn(x: Dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        logits = x["logits"].detach().requires_grad_(True)
        num_pos = x["binary"].sum().clamp_min(1)
        (sigmoid_focal_loss(logits, x["binary"], reduction="sum") / num_pos).backward()
    return run


@contextlib.contextmanager
def implementation(name: str):
    """The ranking losses on path ``name`` ("auto", "eager") inside the block."""
    before = compiled.get_implementation()
    compiled.set_implementation(name)
    try:
        yield
    finally:
        compiled.set_implementation(before)


def op_counts(fn: Callable[[], None], grid: bool, numel: int, path: str = "eager"
              ) -> Tuple[int, int]:
    """(operations, host reads) of one call of ``fn`` (built on CPU tensors) on ``path``; the
    eager path bins with the CPU grid where ``grid`` and ``numel`` reaches ``GRID_MIN_POINTS``,
    else with searchsorted as on a GPU."""
    grid_min = step_sums.GRID_MIN_POINTS
    if not grid:
        step_sums.GRID_MIN_POINTS = numel + 1
    try:
        with implementation(path):
            return sum(count_ops(fn).values()), sum(count_host_reads(fn).values())
    finally:
        step_sums.GRID_MIN_POINTS = grid_min


# ----------------------------------------------------------------------------- table
def _fmt(v: Optional[float], estimated: bool = False, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.{digits}f}"
    return ("~" + s) if estimated else s


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", default="rs,alrp,ap")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-loop-above", type=int, default=1000,
                        help="run the loop over at most this many positives; extrapolate (~)")
    parser.add_argument("--devices", default=None,
                        help="comma list; default: cpu, plus cuda when available")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall clock, or the process's CPU time (CPU device only)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="PxN list, e.g. 100x1e4,1000x1e5")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    for name in losses:
        if name not in ("rs", "alrp", "ap"):
            parser.error(f"unknown loss {name}")
    if args.devices:
        devices = [torch.device(d) for d in args.devices.split(",")]
    else:
        devices = [torch.device("cpu")] + (
            [torch.device("cuda")] if torch.cuda.is_available() else [])
    sizes: List[Tuple[int, int]] = []
    for item in args.sizes.split(","):
        p, n = item.lower().split("x")
        sizes.append((int(float(p)), int(float(n))))

    if compiled.library() is None:
        print(f"compiled path: unavailable ({compiled.get_error()}); ours = eager")
    else:
        print(f"compiled path: built in {compiled.time_build():.2f} s (the first call on a "
              f"machine without it in its cache)")

    header = ["device", "P", "N", "loss", "loop ms", "ours ms", "eager ms", "focal ms",
              "loop/ours", "ours/focal", "eager/focal", "ops", "reads", "eager ops", "GPU ops",
              "GPU reads", "focal ops", "loop MiB", "ours MiB", "focal MiB"]
    rows = []
    for device in devices:
        for p, n in sizes:
            x = make_inputs(p, n, device)
            focal = focal_fn(x)
            focal_ms = time_ms(focal, device, args.repeats)
            focal_mem = peak_memory_mib(focal, device)
            x_cpu = {key: value.cpu() for key, value in x.items()}
            focal_ops, _ = op_counts(focal_fn(x_cpu), False, p + n)
            for loss in losses:
                ours = ours_fn(loss, x)
                ours_ms = time_ms(ours, device, args.repeats)
                ours_mem = peak_memory_mib(ours, device)
                with implementation("eager"):
                    eager_ms = time_ms(ours, device, args.repeats)
                cpu_path = "auto" if device.type == "cpu" else "eager"
                ops, reads = op_counts(ours_fn(loss, x_cpu), device.type == "cpu", p + n,
                                       cpu_path)
                eager_ops, _ = op_counts(ours_fn(loss, x_cpu), True, p + n)
                gpu_ops, gpu_reads = op_counts(ours_fn(loss, x_cpu), False, p + n)
                k = p if p <= args.skip_loop_above else args.skip_loop_above
                loop = loop_fn(loss, x, None if k == p else k)
                _sync(device)
                start = CLOCK()
                loop()
                _sync(device)
                loop_ms = (CLOCK() - start) * 1e3 * p / k
                # its per-iteration temporaries do not grow with the iterations: 20 suffice
                loop_mem = peak_memory_mib(loop_fn(loss, x, min(k, 20)), device)
                est = k != p
                rows.append([
                    device.type, str(p), f"{n:.0e}".replace("+0", ""), loss,
                    _fmt(loop_ms, est, 0), _fmt(ours_ms, digits=2), _fmt(eager_ms, digits=2),
                    _fmt(focal_ms, digits=2), _fmt(loop_ms / ours_ms, est, 0),
                    _fmt(ours_ms / focal_ms, digits=2), _fmt(eager_ms / focal_ms, digits=2),
                    str(ops), str(reads), str(eager_ops), str(gpu_ops), str(gpu_reads),
                    str(focal_ops),
                    _fmt(loop_mem), _fmt(ours_mem), _fmt(focal_mem),
                ])
                print("  done:", " ".join(rows[-1]), flush=True)
            del x, x_cpu

    threads = torch.get_num_threads()
    print()
    print(f"forward+backward, float32, torch {torch.__version__}, CPU threads {threads}, "
          f"{'process CPU time' if args.clock == 'cpu' else 'wall clock'}, "
          f"median of {args.repeats} (loop: 1 run); ~ = loop extrapolated from "
          f"{args.skip_loop_above} positives")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
    print("MiB: extra peak memory of one forward+backward (CPU: peak RSS, CUDA: "
          "max_memory_allocated); the loop's is measured over its first 20 iterations "
          "(its temporaries do not grow with the number of iterations).")
    print("ops / reads: top-level ATen operations (views and metadata not counted) and host "
          "reads of one forward+backward of ours, counted on the CPU with the row's path; "
          "eager ops: the PyTorch path on the CPU "
          f"(from {step_sums.GRID_MIN_POINTS} logits on: the grid, whose extra reads are of "
          "host memory); GPU ops / reads: the PyTorch path with the searchsorted binning a GPU "
          "runs.")


if __name__ == "__main__":
    main()
