#!/usr/bin/env python
"""Per-iteration training statistics of the first iterations of one or more configs.

    python tools/diagnostics/probe_training.py --configs configs/shapes/faster_rcnn_R_18_FPN_quick.yaml \
        configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml --iters 300 --seed 7 \
        --out output/probe [--keys fast_rcnn/lambda_bbox ...] [--opts KEY VALUE ...]

Each config trains with `tools/train_net.py`'s Trainer (same model, data, optimizer and LR
schedule as a full run, SEED = --seed) for the first `--iters` iterations, without checkpoints or
evaluation. After every step the hook records every scalar the model put into Detectron2's
EventStorage at that iteration (the heads' λ, losses, positives, IoUs, ...) and the gradient norm
reaching the backbone (`grad_norm/backbone`: all backbone parameters; `grad_norm/bottom_up`:
the ResNet only) and, for R-CNN heads, that of the box-regression and classification layers
(`grad_norm/bbox_pred`, `grad_norm/cls_score`), i.e. per-iteration values instead of the 20-iteration medians of metrics.json.

Writes `out/<config name>.jsonl` (one line per iteration) and prints / writes `out/summary.md`:
per config, key and window of `--window` iterations, the median, 90th percentile and maximum, so
that spikes are visible beside the typical values.
"""
import argparse
import json
import os
import statistics


import torch
from detectron2.engine import HookBase, SimpleTrainer

from rsloss_d2 import engine

DEFAULT_KEYS = [
    "total_loss",
    "grad_norm/backbone",
    "grad_norm/bottom_up",
    "grad_norm/bbox_pred",
    "grad_norm/cls_score",
    "fast_rcnn/lambda_bbox",
    "fast_rcnn/loss_bbox_unbalanced",
    "loss_roi_bbox",
    "loss_box_reg",
    "loss_cls",
    "fast_rcnn/num_pos",
    "fast_rcnn/num_gt_pos_rois",
    "roi_head/num_fg_samples",
    "fast_rcnn/mean_pos_proposal_iou",
    "fast_rcnn/mean_pos_iou",
    "fast_rcnn/fg_cls_accuracy",
    "rpn/num_pos",
    "rpn/mean_pos_iou",
    "rpn/lambda_bbox",
    "mask_rcnn/lambda_mask",
]


class RecordStep(HookBase):
    """Appends {name: value} of the scalars put at this iteration + backbone gradient norms."""

    def __init__(self, rows):
        self.rows = rows

    def after_step(self):
        # SimpleTrainer zeroes the gradients before the backward of the *next* step, so they are
        # this step's here
        model = self.trainer.model
        model = getattr(model, "module", model)
        row = {"iter": self.trainer.iter}
        groups = [("backbone", model.backbone.parameters()),
                  ("bottom_up", getattr(model.backbone, "bottom_up", model.backbone).parameters())]
        box_predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
        if isinstance(box_predictor, torch.nn.Module) and hasattr(box_predictor, "bbox_pred"):
            # the box-regression layer alone: how hard the box loss pushes the regressor
            groups += [("bbox_pred", box_predictor.bbox_pred.parameters()),
                       ("cls_score", box_predictor.cls_score.parameters())]
        for name, params in groups:
            grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
            if grads:
                row[f"grad_norm/{name}"] = float(torch.linalg.vector_norm(torch.cat(grads)))
        for key, (value, it) in self.trainer.storage.latest().items():
            if it == self.trainer.iter:
                row[key] = float(value)
        self.rows.append(row)


def probe(config, iters, seed, opts, out_dir):
    args = engine.argument_parser().parse_args(
        ["--config-file", config, "SEED", str(seed), "OUTPUT_DIR", out_dir] + opts)
    cfg = engine.setup(args)
    trainer = engine.Trainer(cfg)
    rows = []
    trainer._hooks = []  # no checkpointer, evaluation or writers: only the recorder
    trainer.register_hooks([RecordStep(rows)])
    SimpleTrainer.train(trainer, 0, iters)
    return rows


def summary(name, rows, keys, window):
    lines = [f"### {name}", "", "| key | " + " | ".join(
        f"it {s}–{min(s + window, len(rows)) - 1}" for s in range(0, len(rows), window)) + " |",
        "|---|" + "---|" * len(range(0, len(rows), window))]
    for key in keys:
        cells = []
        for start in range(0, len(rows), window):
            vals = sorted(r[key] for r in rows[start:start + window] if key in r)
            if not vals:
                cells.append("–")
                continue
            p90 = vals[min(len(vals) - 1, int(0.9 * len(vals)))]
            cells.append(f"{statistics.median(vals):.3g} / {p90:.3g} / {vals[-1]:.3g}")
        if any(c != "–" for c in cells):
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS)
    parser.add_argument("--out", default="output/probe")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = parser.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    lines = ["Cells: median / 90th percentile / maximum over the window.", ""]
    for config in a.configs:
        name = os.path.splitext(os.path.basename(config))[0]
        rows = probe(config, a.iters, a.seed, a.opts, os.path.join(a.out, name))
        with open(os.path.join(a.out, name + ".jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        lines += summary(name, rows, a.keys, a.window)
    text = "\n".join(lines)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
