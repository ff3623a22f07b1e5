#!/usr/bin/env python
"""Training step time of two models on the same batches (e.g. standard vs RS Mask R-CNN).

    python tools/benchmarks/benchmark_train.py \
        --config-a configs/shapes/mask_rcnn_R_18_FPN_quick.yaml \
        --config-b configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml --warmup 10 --iters 40

Both models are built from their configs (same seed), get Detectron2's optimizer and LR schedule
of their config, and run ``warmup`` + ``iters`` training steps (forward, backward, optimizer and
scheduler step) on the same pre-loaded batches of config A's training set (data loading is not
timed). The steps of the two models are interleaved (A, B, then B, A, ...) so that load changes
on a shared machine hit both alike. Prints the median / mean / p10 / p90 step time of each and
the ratio B / A of the medians in one table. Extra ``KEY VALUE`` pairs after ``--opts`` apply to
both configs (``--opts-b`` to config B only). ``--weights-a/-b`` load checkpoints (e.g. the
trained models, whose RoI heads see more positives than at initialisation, so the step times are
those of a trained model).
"""
import argparse
import copy
import itertools
import os
import statistics
import time


import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.events import EventStorage

from rsloss_d2.data import check_dataset_files
from rsloss_d2.utils.benchmark import ab_configs, add_ab_arguments, machine_line, print_overrides


class Runner:
    """One model with its optimizer and LR scheduler; ``step(batch)`` times one training step."""

    def __init__(self, cfg, seed, weights=""):
        torch.manual_seed(seed)
        self.model = build_model(cfg)
        if weights:  # e.g. a trained checkpoint: time the steps of a trained model
            DetectionCheckpointer(self.model).load(weights)
        self.model.train()
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.cuda = cfg.MODEL.DEVICE.startswith("cuda")
        self.storage = EventStorage(0)
        self.times = []

    def step(self, batch, record):
        batch = copy.copy(batch)  # the list only: the model does not modify the dicts
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with self.storage:
            losses = self.model(batch)
            total = sum(losses.values())
            if not torch.isfinite(total):
                values = {k: float(v) for k, v in losses.items()}
                raise FloatingPointError(f"non-finite loss: {values}")
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.storage.step()
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if record:
            self.times.append(elapsed)
        return float(total.detach())


def summary(times):
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return statistics.median(times), statistics.fmean(times), q[0], q[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per model")
    parser.add_argument("--iters", type=int, default=40, help="timed steps per model")
    parser.add_argument("--num-batches", type=int, default=10,
                        help="distinct pre-loaded batches, cycled (0: one per step)")
    parser.add_argument("--seed", type=int, default=0)
    add_ab_arguments(parser, "configs/shapes/mask_rcnn_R_18_FPN_quick.yaml",
                     "configs/shapes/rs_mask_rcnn_R_18_FPN_quick.yaml")
    args = parser.parse_args(argv)
    cfg_a, cfg_b = ab_configs(args, num_workers=0)
    check_dataset_files(list(cfg_a.DATASETS.TRAIN))
    total_steps = args.warmup + args.iters
    num_batches = args.num_batches if args.num_batches > 0 else total_steps
    torch.manual_seed(args.seed)
    loader = build_detection_train_loader(cfg_a)
    batches = list(itertools.islice(iter(loader), num_batches))
    del loader

    runner_a = Runner(cfg_a, args.seed, args.weights_a)
    runner_b = Runner(cfg_b, args.seed, args.weights_b)
    for i in range(total_steps):
        batch = batches[i % num_batches]
        record = i >= args.warmup
        order = (runner_a, runner_b) if i % 2 == 0 else (runner_b, runner_a)
        for runner in order:
            runner.step(batch, record)

    med_a, mean_a, p10_a, p90_a = summary(runner_a.times)
    med_b, mean_b, p10_b, p90_b = summary(runner_b.times)
    print(machine_line(args.device))
    print(f"images per step: {cfg_a.SOLVER.IMS_PER_BATCH}; warm-up {args.warmup}, "
          f"timed {args.iters} steps per model, interleaved; {num_batches} distinct batches")
    header = (f"| {'model':<6} | {'config':<48} | {'median s':>8} | {'mean s':>7} "
              f"| {'p10 s':>6} | {'p90 s':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, cfg_file, (med, mean, p10, p90) in (
        ("A", args.config_a, (med_a, mean_a, p10_a, p90_a)),
        ("B", args.config_b, (med_b, mean_b, p10_b, p90_b)),
    ):
        print(f"| {name:<6} | {os.path.relpath(cfg_file):<48} | {med:8.3f} | {mean:7.3f} | "
              f"{p10:6.3f} | {p90:6.3f} |")
    print_overrides(args)
    print(f"ratio B / A of the median step times: {med_b / med_a:.3f}")
    return med_b / med_a


if __name__ == "__main__":
    main()
