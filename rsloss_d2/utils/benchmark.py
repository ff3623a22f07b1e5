"""Pieces shared by the benchmarks in ``tools/benchmarks``: the machine line of every report, and
for the A/B benchmarks (``benchmark_train.py``, ``benchmark_inference.py``: two configs timed
side by side on the same inputs) their options and configs, with extra ``KEY VALUE`` pairs for
both (``--opts``) or for B only (``--opts-b``)."""
from __future__ import annotations

import argparse
import os
import platform
from typing import Optional, Tuple

import torch

__all__ = ["add_ab_arguments", "ab_configs", "machine_line", "print_overrides"]


def add_ab_arguments(parser: argparse.ArgumentParser, config_a: str, config_b: str) -> None:
    """Add ``--config-a/-b``, ``--weights-a/-b``, ``--device``, ``--threads``, ``--opts-b`` and
    ``--opts`` (it takes the rest of the command line, so it is listed last)."""
    parser.add_argument("--config-a", default=config_a)
    parser.add_argument("--config-b", default=config_b)
    parser.add_argument("--weights-a", default="", help="checkpoint to load into model A")
    parser.add_argument("--weights-b", default="", help="checkpoint to load into model B")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--opts-b", nargs="*", default=[],
                        help="KEY VALUE pairs applied to config B only")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE pairs applied to both configs (last option)")


def _load(config_file: str, opts, device: str, num_workers: Optional[int]):
    from rsloss_d2.engine import load_config

    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = device
    if num_workers is not None:
        cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.freeze()
    return cfg


def ab_configs(args: argparse.Namespace, num_workers: Optional[int] = None) -> Tuple:
    """Apply ``--threads`` and return the frozen ``(cfg_a, cfg_b)`` on ``--device``
    (``num_workers``: ``DATALOADER.NUM_WORKERS`` of both, over any option)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg_a = _load(args.config_a, args.opts, args.device, num_workers)
    cfg_b = _load(args.config_b, list(args.opts) + list(args.opts_b), args.device, num_workers)
    return cfg_a, cfg_b


def machine_line(device: str) -> str:
    """``device: <device> (<processor>, torch threads <n>, load average <1, 5, 15 min>)``."""
    load = tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"device: {device} ({platform.processor() or platform.machine()}, "
            f"torch threads {torch.get_num_threads()}, load average {load})")


def print_overrides(args: argparse.Namespace) -> None:
    """Print the ``--opts`` / ``--opts-b`` pairs of the run, if any."""
    if args.opts or args.opts_b:
        print(f"overrides: both {list(args.opts)}, B only {list(args.opts_b)}")
