#!/usr/bin/env python
"""Draw score vs IoU of the true positives (2-D histograms) of two or more runs side by side, as
a PNG: how well each detector's scores sort its true positives by localisation quality (what RS
Loss and aLRP Loss train for), with Spearman's correlation in each title.

    python tools/plot_ranking_quality.py --gt datasets/coco/annotations/instances_val2017.json \\
        --run ATSS=output/atss_R_50_FPN_1x --run RS-ATSS=output/rs_atss_R_50_FPN_1x \\
        --out atss_vs_rs_atss.png [--iou-type segm] [--dataset coco_2017_val]

A run is `NAME=PATH`, PATH a run's output directory (its `inference/<dataset>/` holds
Detectron2's `coco_instances_results.json` or `lvis_instances_results.json`), that inference
folder, or the results json itself. The true positives are those of the COCO matching at IoU
0.5 (area "all", 100 detections per image and class), or of LVIS's federated matching (300 per
image) for an `lvis_instances_results.json`; see `rsloss_d2.evaluation.ranking_quality`.
"""
import argparse
import glob
import json
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from rsloss_d2.evaluation import evaluate_coco, evaluate_lvis  # noqa: E402

RESULT_FILES = ("coco_instances_results.json", "lvis_instances_results.json")


def find_results(path, dataset=None):
    """The results json of a run directory / inference folder / json path."""
    if os.path.isfile(path):
        return path
    found = []
    for pattern in ("{}", "{}/*", "{}/inference/*"):
        for d in glob.glob(pattern.format(glob.escape(path))):
            if dataset is not None and os.path.basename(d) != dataset and d != path:
                continue
            found += [os.path.join(d, f) for f in RESULT_FILES
                      if os.path.isfile(os.path.join(d, f))]
    found = sorted(set(found))
    if len(found) != 1:
        what = "no" if not found else "several"
        raise SystemExit(f"plot_ranking_quality: {what} results json under {path!r}"
                         + (f": {found} (choose one with --dataset)" if found else ""))
    return found[0]


def true_positive_pairs(gt, results_path, iou_type):
    """(score, IoU) arrays of the true positives and the ranking-quality dict of one run."""
    with open(results_path) as f:
        results = json.load(f)
    if iou_type == "segm":  # as Detectron2: the mask area decides the area range
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    lvis = os.path.basename(results_path).startswith("lvis")
    ev = (evaluate_lvis if lvis else evaluate_coco)(gt, results, iou_type, ap=False,
                                                    olrp=False)
    m = ev["matching"]
    tp = m.matched[0, 0] & ~m.ignored[0, 0]  # IoU 0.5, area "all"
    return m.det_score[tp], m.iou[0][tp], ev["ranking"]


def plot(runs, out, iou_type, bins=40):
    """runs: [(name, scores, ious, ranking dict)]; writes the PNG `out`."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False,
                             sharey=True, constrained_layout=True)
    counts = [np.histogram2d(i, s, bins=bins, range=[[0.5, 1], [0, 1]])[0] for _, s, i, _ in runs]
    vmax = max([c.max() for c in counts] + [1])
    for ax, (name, scores, ious, rq), c in zip(axes[0], runs, counts):
        im = ax.imshow(np.where(c > 0, c, np.nan).T, origin="lower", aspect="auto",
                       extent=[0.5, 1, 0, 1], norm=LogNorm(vmin=1, vmax=vmax), cmap="viridis")
        ax.set_title(f"{name}: Spearman {rq['spearman']:.3f} (class mean "
                     f"{rq['spearman_class_mean']:.3f})\n{rq['num_tp']} true positives, top-10 "
                     f"IoU {rq['top10_iou']:.3f} vs mean {rq['mean_iou']:.3f}", fontsize=9)
        ax.set_xlabel(f"IoU with the matched object ({iou_type})")
    axes[0][0].set_ylabel("score")
    fig.colorbar(im, ax=axes[0].tolist(), label="true positives")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt", required=True, help="ground-truth json (COCO or LVIS format)")
    p.add_argument("--run", action="append", required=True, metavar="NAME=PATH",
                   help="a run to plot (give two or more, e.g. ATSS and RS-ATSS)")
    p.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"))
    p.add_argument("--dataset", help="the inference/<dataset> folder to use in a run directory")
    p.add_argument("--out", default="ranking_quality.png")
    p.add_argument("--bins", type=int, default=40)
    args = p.parse_args(argv)
    specs = []
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"plot_ranking_quality: --run wants NAME=PATH, got {spec!r}")
        specs.append((name, find_results(path, args.dataset)))
    with open(args.gt) as f:
        gt = json.load(f)
    runs = []
    for name, path in specs:
        scores, ious, rq = true_positive_pairs(gt, path, args.iou_type)
        print(f"{name}: spearman {rq['spearman']:.4f}, class mean "
              f"{rq['spearman_class_mean']:.4f}, top10_iou {rq['top10_iou']:.4f}, mean_iou "
              f"{rq['mean_iou']:.4f}, num_tp {rq['num_tp']}")
        runs.append((name, scores, ious, rq))
    plot(runs, args.out, args.iou_type, args.bins)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
