#!/usr/bin/env python
"""Plot a run's Detectron2 `metrics.json` (one json object per logged iteration) as PNGs:
losses, learning rate and the evaluation metrics (AP, oLRP, ...) over iterations.

    python tools/plot_metrics.py output/shapes_mask_rcnn_R_18_FPN_quick/metrics.json [--out DIR]
"""
import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    """Return {key: [(iteration, value), ...]} from a metrics.json file (bad lines are skipped
    with a warning, e.g. the last line of an interrupted run)."""
    series = defaultdict(list)
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"plot_metrics: skipping unreadable line {lineno} of {path}")
                continue
            it = rec.get("iteration")
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    series[k].append((it, float(v)))
    if not series:
        raise ValueError(f"plot_metrics: no metrics found in {path}")
    return series


def _plot(groups, title, dst, logy=False):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, pts in sorted(groups.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=key, marker="o" if len(xs) < 20 else None)
    ax.set_xlabel("iteration")
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    plt.close(fig)
    return dst


def plot_metrics(metrics_json, out_dir=None):
    """Write losses.png, lr.png and eval.png (when evaluation metrics exist). Returns the paths."""
    series = read_metrics(metrics_json)
    out_dir = out_dir or os.path.dirname(os.path.abspath(metrics_json))
    os.makedirs(out_dir, exist_ok=True)
    losses = {k: v for k, v in series.items() if k.startswith("loss") or k == "total_loss"}
    evals = {k: v for k, v in series.items() if "/" in k and ("AP" in k or "LRP" in k)}
    written = []
    if losses:
        written.append(_plot(losses, "training losses", os.path.join(out_dir, "losses.png")))
    if "lr" in series:
        written.append(_plot({"lr": series["lr"]}, "learning rate", os.path.join(out_dir, "lr.png")))
    if evals:
        written.append(_plot(evals, "evaluation", os.path.join(out_dir, "eval.png")))
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics_json")
    p.add_argument("--out", default=None, help="output folder (default: next to metrics.json)")
    args = p.parse_args(argv)
    for path in plot_metrics(args.metrics_json, args.out):
        print(path)


if __name__ == "__main__":
    main()
