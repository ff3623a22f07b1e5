#!/usr/bin/env python
"""Train and evaluate several configs over several seeds and write a mean ± spread table.

    python tools/run_seeds.py --configs configs/shapes/faster_rcnn_R_18_FPN_quick.yaml \
        configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml --seeds 1 2 3 \
        --metrics bbox/AP bbox/AP50 bbox/AP75 bbox/oLRP --out output/seeds [--opts KEY VALUE ...]

Each (config, seed) runs `tools/train_net.py --config-file C SEED s OUTPUT_DIR out/<name>/seed<s>`
one after the other (a run whose `metrics.json` already holds a final evaluation is reused, so an
interrupted sweep continues where it stopped). The table (markdown, also written to
`out/table.md`) gives per config and metric the mean over seeds, "± spread" = half the range
(max − min) / 2, and the individual values; two models differ beyond run-to-run variation only
where their ranges do not overlap.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_metrics(output_dir):
    """The last evaluation entry of `output_dir/metrics.json` (None if there is none)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if any(k.startswith(("bbox/", "segm/")) for k in r)]
    return evals[-1] if evals else None


def run_one(config, seed, output_dir, opts):
    if final_metrics(output_dir) is not None:
        return final_metrics(output_dir)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           "SEED", str(seed), "OUTPUT_DIR", output_dir] + list(opts)
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return final_metrics(output_dir)


def table(results, metrics):
    """results: {config name: [metrics dict per seed]} -> markdown lines."""
    lines = ["| config | seeds | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name, runs in results.items():
        cells = []
        for m in metrics:
            vals = [r[m] for r in runs if r is not None and m in r]
            if not vals:
                cells.append("–")
                continue
            spread = (max(vals) - min(vals)) / 2
            cells.append(f"{statistics.mean(vals):.1f} ± {spread:.1f} "
                         f"({', '.join(f'{v:.1f}' for v in vals)})")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--metrics", nargs="+", default=["bbox/AP", "bbox/AP50", "bbox/AP75",
                                                    "bbox/oLRP"])
    p.add_argument("--out", default="output/seeds")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs for every run")
    args = p.parse_args(argv)
    results = {}
    for config in args.configs:
        name = os.path.splitext(os.path.basename(config))[0]
        results[name] = [run_one(config, s, os.path.join(args.out, name, f"seed{s}"), args.opts)
                         for s in args.seeds]
    lines = table(results, args.metrics)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
