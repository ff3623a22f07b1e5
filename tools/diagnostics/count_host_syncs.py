#!/usr/bin/env python
"""Count the host synchronisations of a training step on CUDA, per source line.

    python tools/diagnostics/count_host_syncs.py \
        --config-files configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml configs/shapes/rs_atss_R_18_FPN_quick.yaml \
        [--warmup 3] [--iters 5] [--opts KEY VALUE ...]

For each config: the model is built on CUDA with Detectron2's optimizer, a few batches of the
config's training set are pre-loaded, ``warmup`` steps run unobserved, then ``iters`` steps
(forward, backward, optimizer step) run under ``torch.cuda.set_sync_debug_mode("warn")``. Every
operation that makes the host wait for the GPU (``.item()``, ``.tolist()``, ``nonzero``, boolean
mask indexing, a device-to-host copy, ...) then issues a warning; each is attributed to the
innermost frame of the Python stack that lies in ``rsloss_d2`` or ``detectron2`` (else the
innermost frame). Prints, per config, the syncs per step (mean, min, max over the observed steps)
in ``rsloss_d2`` / ``detectron2`` / the backward pass / elsewhere, and every site with its syncs per step and its
source line. Syncs of the backward pass run on the autograd engine's threads, which print them
to stderr without a Python stack: they are counted from there, as "autograd".

The harness itself adds none: no loss is read back inside the observed steps (Detectron2's
trainer reads the losses once per step for its metrics; that is the trainer's, not the heads').
"""
import argparse
import collections
import itertools
import linecache
import os
import sys
import tempfile
import traceback
import warnings
from typing import Dict, List, Optional, Tuple


import torch

SYNC_MESSAGE = "called a synchronizing CUDA operation"  # torch's text for sync debug mode "warn"


def attribute(stack: List[traceback.FrameSummary]) -> Tuple[str, str, traceback.FrameSummary]:
    """(owner, site, frame) of a sync: the innermost frame of the stack that lies in
    ``rsloss_d2`` or ``detectron2`` decides the owner (so Detectron2's pooler called from an
    rsloss_d2 head counts for Detectron2; torch / torchvision frames are skipped); without one,
    owner "other" and the innermost frame outside ``warnings.py``. Site: "path:line function",
    the path from the package directory on."""
    for frame in reversed(stack):
        for owner in ("rsloss_d2", "detectron2"):
            marker = os.sep + owner + os.sep
            if marker in frame.filename:
                rel = owner + os.sep + frame.filename.rsplit(marker, 1)[1]
                return owner, f"{rel}:{frame.lineno} {frame.name}", frame
    frames = [f for f in stack if not f.filename.endswith("warnings.py")] or stack
    frame = frames[-1]
    return "other", f"{frame.filename}:{frame.lineno} {frame.name}", frame


AUTOGRAD_SITE = ("autograd", "backward pass (autograd device thread: no Python stack)")


class SyncCounter:
    """Context manager that counts the sync warnings, by site, for each ``new_step()`` bracket.

    ``counts[i]`` is a Counter {(owner, site): n} of step i. Warnings that are not sync warnings
    are passed on to the previous ``warnings.showwarning``.

    Syncs inside the backward pass happen on the autograd engine's device threads, where no
    Python handler is installed: torch prints them to the process's stderr. With
    ``capture_stderr`` the file descriptor 2 is redirected to a temporary file while counting,
    each such line is counted under ``AUTOGRAD_SITE`` for the step in which it was printed, and
    everything else written there is copied back to stderr at the end.
    """

    def __init__(self, cuda: bool = True, capture_stderr: bool = True):
        self.cuda = cuda
        self.capture_stderr = capture_stderr
        self.counts: List[collections.Counter] = []
        self.sources: Dict[str, str] = {}

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        self._previous = warnings.showwarning
        warnings.showwarning = self._record
        if self.capture_stderr:
            sys.stderr.flush()
            self._err_file = tempfile.TemporaryFile()
            self._err_saved = os.dup(2)
            os.dup2(self._err_file.fileno(), 2)
            self._err_read = 0
            self._err_other: List[bytes] = []
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("default")
        if self.capture_stderr:
            self._harvest_stderr()
            sys.stderr.flush()
            os.dup2(self._err_saved, 2)
            os.close(self._err_saved)
            self._err_file.close()
            if self._err_other:
                sys.stderr.write(b"".join(self._err_other).decode(errors="replace"))
        self._catch.__exit__(*exc)
        return False

    def new_step(self):
        if self.capture_stderr and self.counts:
            self._harvest_stderr()
        self.counts.append(collections.Counter())

    def _harvest_stderr(self):
        """Count the sync lines written to fd 2 since the last harvest into the current step."""
        sys.stderr.flush()
        self._err_file.seek(self._err_read)
        data = self._err_file.read()
        self._err_read += len(data)
        for line in data.splitlines(keepends=True):
            if SYNC_MESSAGE.encode() in line:
                if not self.counts:
                    self.counts.append(collections.Counter())
                self.counts[-1][AUTOGRAD_SITE] += 1
            else:
                self._err_other.append(line)

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE not in str(message):
            return self._previous(message, category, filename, lineno, file, line)
        stack = traceback.extract_stack()[:-1]  # without this hook's frame
        owner, site, frame = attribute(stack)
        if not self.counts:
            self.new_step()
        self.counts[-1][(owner, site)] += 1
        if site not in self.sources:
            self.sources[site] = linecache.getline(frame.filename, frame.lineno).strip()

    def summary(self) -> Tuple[Dict[str, Tuple[float, int, int]], List[Tuple[str, str, float]]]:
        """({owner: (mean, min, max) syncs per step}, [(owner, site, mean per step)] sorted)."""
        steps = len(self.counts) or 1
        per_owner = {}
        for owner in ("rsloss_d2", "detectron2", "autograd", "other"):
            n = [sum(v for (o, _), v in c.items() if o == owner) for c in self.counts] or [0]
            per_owner[owner] = (sum(n) / steps, min(n), max(n))
        totals = collections.Counter()
        for c in self.counts:
            totals.update(c)
        sites = sorted(((o, s, v / steps) for (o, s), v in totals.items()),
                       key=lambda t: (t[0] != "rsloss_d2", t[0], -t[2], t[1]))
        return per_owner, sites


def run_config(config_file: str, opts: List[str], warmup: int, iters: int,
               num_batches: int, seed: int) -> SyncCounter:
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from rsloss_d2.engine import load_config
    from rsloss_d2.data.transforms import build_train_mapper  # the mapper of tools/train_net.py

    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = "cuda"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    torch.manual_seed(seed)
    loader = build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))
    batches = list(itertools.islice(iter(loader), num_batches))
    del loader
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    counter = SyncCounter(cuda=True)

    def step(i):
        losses = model(batches[i % num_batches])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        storage.step()

    with EventStorage(0) as storage:
        for i in range(warmup):
            step(i)
        with counter:
            for i in range(warmup, warmup + iters):
                counter.new_step()
                step(i)
    del model, optimizer
    torch.cuda.empty_cache()
    return counter


def format_report(config_file: str, counter: SyncCounter) -> str:
    per_owner, sites = counter.summary()
    lines = [f"== {config_file}: host syncs per training step over {len(counter.counts)} steps"]
    for owner, (mean, lo, hi) in per_owner.items():
        lines.append(f"   {owner:<10} mean {mean:6.1f}  min {lo:4d}  max {hi:4d}")
    lines.append("   | owner | site | per step | source |")
    lines.append("   |---|---|---|---|")
    for owner, site, mean in sites:
        lines.append(f"   | {owner} | {site} | {mean:.1f} | `{counter.sources.get(site, '')}` |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, SyncCounter]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-files", nargs="+", required=True)
    parser.add_argument("--warmup", type=int, default=3, help="unobserved steps")
    parser.add_argument("--iters", type=int, default=5, help="observed steps")
    parser.add_argument("--num-batches", type=int, default=4, help="pre-loaded batches, cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE pairs applied to every config (last option)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs CUDA: torch.cuda.set_sync_debug_mode only sees CUDA syncs")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    out = {}
    for config_file in args.config_files:
        counter = run_config(config_file, list(args.opts), args.warmup, args.iters,
                             args.num_batches, args.seed)
        print(format_report(config_file, counter), flush=True)
        out[config_file] = counter
    return out


if __name__ == "__main__":
    main()
