#!/usr/bin/env python
"""Train and evaluate several configs over several seeds and write a mean ± spread table.

    .venv/bin/python tools/run_seeds.py --configs configs/shapes/faster_rcnn_R_18_FPN_quick.yaml \
        configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml --seeds 1 2 3 \
        --metrics bbox/AP bbox/AP50 bbox/AP75 bbox/oLRP --out output/seeds [--opts KEY VALUE ...]

    .venv/bin/python tools/run_seeds.py --jobs 2 --claim "RS-ATSS beats ATSS" \
        --configs configs/shapes/atss_R_18_FPN_quick.yaml \
        configs/shapes/rs_atss_R_18_FPN_quick.yaml \
        --grid SOLVER.BASE_LR 0.005 0.01 0.02 --select bbox/AP \
        --metrics bbox/AP bbox/oLRP --out output/claims/rs_atss

Each (config, seed) runs `tools/train_net.py --config-file C --resume SEED s
OUTPUT_DIR out/<config>/seed<s> [--opts ...] [config overrides] [grid value]` as a subprocess
whose output goes to `<run dir>/run.log`; up to `--jobs` run at once, each with
OMP_NUM_THREADS = MKL_NUM_THREADS = `--threads` (default: the CPUs divided by `--jobs`). A run
whose `metrics.json` already holds a final evaluation is reused, and an unfinished one continues
from its last checkpoint, so an interrupted sweep continues where it stopped.

A `--configs` item is a yaml path optionally followed by whitespace-separated `KEY VALUE` pairs
for that config only, after `--opts` (values without spaces, e.g. "(64,96)"):
"configs/shapes/atss_R_18_FPN_quick.yaml SOLVER.BASE_LR 0.004" is the row
`atss_R_18_FPN_quick (BASE_LR 0.004)` and the folder `atss_R_18_FPN_quick__BASE_LR_0.004`.

`--grid KEY V1 V2 ...` first trains every config at every value with the first seed, picks per
config the value with the best `--select` metric (default: the first of `--metrics`; metrics
whose name contains "LRP" are lower-is-better, all others higher-is-better), then trains every
seed at that value (the grid's run at the chosen value is the first seed's run).

`--weights-from OUT` trains nothing: each run evaluates (`--eval-only`) the `model_final.pth` of
the same run under an earlier `--out OUT`, with this call's `--opts` (e.g. another test score
threshold), into its own folder of `--out`; the grid choice is made again on these numbers.

The table (markdown, also written to `out/table.md`) gives per config and metric the mean over
seeds, "± spread" = half the range (max − min) / 2, and the individual values. With
`--claim TEXT` the section `## TEXT` of `--results` (default docs/results.md) is written or
replaced: the command line, date and commit (and, when reused runs were made at other commits,
each run's commit, recorded in `<run dir>/code_version.txt` when it starts), the grid, the table
and per metric a verdict for each consecutive pair of configs (given worst-expected first):
"reproduced" when the ranges over seeds do not overlap and the later config is better, "not
reproduced" when they do not overlap and it is worse, "within noise" when they overlap (at
least 3 seeds needed). The exit status is 1 when a run failed (its cells say "failed").
"""
import argparse
import collections
import datetime
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_SEEDS = 3
LOG_TAIL_LINES = 30
VERSION_FILE = "code_version.txt"  # in each run dir: the code_version() the run started at
RESULTS_HEADER = """# Claims table

Every claim of the papers checked on the synthetic `shapes` / `shapes_lt` data. Within a claim
all models share the data, backbone, schedule and seeds; a cell is the mean over seeds ± half the
range (max − min) / 2, followed by the value of each seed. The configs of a claim are listed
worst-expected first; for each consecutive pair A → B and each metric the verdict is
"reproduced" when every seed of B is better than every seed of A, "not reproduced" when every
seed of B is worse, "within noise" when the ranges overlap; fewer than 3 seeds give no verdict.
oLRP metrics are lower-is-better, all others higher-is-better. Each section is written by
`tools/run_seeds.py --claim` (the command line is in the section); rerunning it replaces it.
"""

# weights: with --weights-from, the checkpoint the run evaluates instead of training
Run = collections.namedtuple("Run", "name seed config output_dir opts weights", defaults=(None,))


def final_metrics(output_dir):
    """The last evaluation entry of `output_dir/metrics.json` (None if there is none)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if any(k.startswith(("bbox/", "segm/")) for k in r)]
    return evals[-1] if evals else None


def lower_is_better(metric):
    """oLRP and its components are errors; AP-like metrics are scores."""
    return "LRP" in metric


def parse_config(item):
    """A `--configs` item -> (yaml path, [KEY, VALUE, ...] overrides)."""
    tokens = item.split()
    if not tokens:
        raise ValueError("empty --configs item")
    if len(tokens) % 2 != 1:
        raise ValueError(f"--configs item {item!r}: the yaml path must be followed by KEY VALUE "
                         f"pairs")
    return tokens[0], tokens[1:]


def _pairs(overrides):
    return list(zip(overrides[0::2], overrides[1::2]))


def row_name(config, overrides=()):
    """The table row of a config: its yaml basename, then its overrides with short keys."""
    name = os.path.splitext(os.path.basename(config))[0]
    if not overrides:
        return name
    return name + " (" + " ".join(f"{k.split('.')[-1]} {v}" for k, v in _pairs(overrides)) + ")"


def _safe(token):
    safe = re.sub(r"[^\w.+-]+", "-", token)
    # keep the sign of a negative value, drop the dashes left by brackets and commas
    safe = ("-" if token.startswith("-") else "") + safe.strip("-")
    return safe or "empty"


def dir_name(config, overrides=()):
    """The filesystem-safe folder name of a config with its overrides."""
    name = os.path.splitext(os.path.basename(config))[0]
    if not overrides:
        return name
    return name + "__" + "_".join(f"{_safe(k.split('.')[-1])}_{_safe(v)}"
                                  for k, v in _pairs(overrides))


def run_dir(out, config, overrides, seed):
    return os.path.join(os.path.abspath(out), dir_name(config, overrides), f"seed{seed}")


def train_command(run):
    """The tools/train_net.py command line of one run."""
    start = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
             os.path.abspath(run.config)]
    if run.weights:  # evaluated, not trained: train_net saves the numbers to its metrics.json
        return start + ["--eval-only", "SEED", str(run.seed), "OUTPUT_DIR", run.output_dir,
                        "MODEL.WEIGHTS", run.weights] + list(run.opts)
    # --resume: an interrupted run continues from its last checkpoint, a trained one whose final
    # evaluation is missing is only evaluated (without it, train_net refuses a finished run)
    return start + ["--resume", "SEED", str(run.seed), "OUTPUT_DIR", run.output_dir] + \
        list(run.opts)


def default_threads(jobs):
    """The CPUs this process may use, shared among `jobs` runs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


def _start(run, threads, version=None):
    os.makedirs(run.output_dir, exist_ok=True)
    if version:
        with open(os.path.join(run.output_dir, VERSION_FILE), "w") as f:
            f.write(version + "\n")
    cmd = train_command(run)
    # unbuffered, so that run.log can be followed while the run trains
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    log = open(os.path.join(run.output_dir, "run.log"), "w")
    log.write("+ " + shlex.join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _log_tail(run):
    with open(os.path.join(run.output_dir, "run.log"), errors="replace") as f:
        return f.read().splitlines()[-LOG_TAIL_LINES:]


def run_all(runs, jobs=1, threads=None, version=None):
    """Train `runs` (finished ones reused), up to `jobs` at once -> final metrics per run, in
    order (None for a failed run). `version` is recorded in each started run's folder."""
    threads = threads or default_threads(jobs)
    results = [None] * len(runs)
    pending = []
    for i, run in enumerate(runs):
        results[i] = final_metrics(run.output_dir)
        if results[i] is not None:
            print(f"reused   {run.name} seed {run.seed}: {run.output_dir}", flush=True)
        else:
            pending.append(i)
    active = {}  # index -> (process, log file, start time)
    while pending or active:
        while pending and len(active) < jobs:
            i = pending.pop(0)
            proc, log = _start(runs[i], threads, version)
            active[i] = (proc, log, time.time())
            print(f"started  {runs[i].name} seed {runs[i].seed}: {runs[i].output_dir}/run.log",
                  flush=True)
        time.sleep(0.2)
        for i, (proc, log, start) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del active[i]
            run = runs[i]
            results[i] = final_metrics(run.output_dir) if proc.returncode == 0 else None
            if results[i] is not None:
                print(f"finished {run.name} seed {run.seed} in {time.time() - start:.0f} s",
                      flush=True)
                continue
            why = (f"exit status {proc.returncode}" if proc.returncode
                   else "no evaluation in metrics.json")
            print(f"FAILED   {run.name} seed {run.seed} ({why}); last lines of "
                  f"{run.output_dir}/run.log:", flush=True)
            print("\n".join("    " + line for line in _log_tail(run)), flush=True)
    return results


def run_one(config, seed, output_dir, opts, threads=None):
    """Train one (config, seed) into `output_dir` unless it is finished -> its final metrics
    (None if the run failed)."""
    name = os.path.basename(os.path.dirname(os.path.abspath(output_dir)))
    return run_all([Run(name, seed, config, os.path.abspath(output_dir), list(opts))], 1,
                   threads)[0]


def metric_values(runs, metric):
    """The values of `metric` over the finished runs that have it (NaN counts as missing)."""
    return [r[metric] for r in runs if r is not None and metric in r
            and not (isinstance(r[metric], float) and math.isnan(r[metric]))]


def decimals(metric):
    """Digits after the point: 1 for percentages (AP, oLRP), 3 for values in [-1, 1]
    (the ranking-quality correlations and IoUs)."""
    return 3 if metric.split("/")[-1].startswith(("spearman", "top10_iou", "mean_iou")) else 1


def table(results, metrics):
    """results: {config name: [metrics dict per seed, None for a failed run]} -> markdown lines."""
    lines = ["| config | seeds | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name, runs in results.items():
        cells = []
        done = [r for r in runs if r is not None]
        for m in metrics:
            vals = [r[m] for r in done if m in r]
            if not vals:
                cells.append("failed" if runs and not done else "–")
                continue
            spread = (max(vals) - min(vals)) / 2
            d = decimals(m)
            cells.append(f"{statistics.mean(vals):.{d}f} ± {spread:.{d}f} "
                         f"({', '.join(f'{v:.{d}f}' for v in vals)})")
        lines.append(f"| {name} | {len(done)} | " + " | ".join(cells) + " |")
    return lines


def verdict(a, b, lower_better=False, min_seeds=MIN_SEEDS):
    """Does B beat A beyond the seed-to-seed variation? `a`, `b`: the values over seeds."""
    n = min(len(a), len(b))
    if n < min_seeds:
        return f"not enough seeds ({n})"
    if lower_better:
        a, b = [-v for v in a], [-v for v in b]
    if min(b) > max(a):
        return "reproduced"
    if max(b) < min(a):
        return "not reproduced"
    return "within noise"


def verdict_rows(results, metrics, min_seeds=MIN_SEEDS):
    """[(metric, "A → B", verdict)] for each consecutive pair of `results` (claim order); a
    metric that one of the pair lacks gets no row."""
    names = list(results)
    rows = []
    for m in metrics:
        for a, b in zip(names, names[1:]):
            va, vb = metric_values(results[a], m), metric_values(results[b], m)
            if va and vb:
                rows.append((m, f"{a} → {b}", verdict(va, vb, lower_is_better(m), min_seeds)))
    return rows


def choose_grid_value(scores, metric):
    """scores: {grid value: select-metric value or None} -> the best value (the first of equal
    ones), None when no run gave the metric."""
    valid = [(v, s) for v, s in scores.items() if s is not None and not math.isnan(s)]
    if not valid:
        return None
    pick = min if lower_is_better(metric) else max
    return pick(valid, key=lambda vs: vs[1])[0]


def grid_lines(key, values, scores, chosen, metric, seed):
    """The grid table (config × value -> `metric`, the chosen value in bold) and the choices."""
    order = "lower" if lower_is_better(metric) else "higher"
    lines = [f"Grid over `{key}` (seed {seed}, {metric}, {order} is better):", "",
             "| config | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
    for name, by_value in scores.items():
        cells = []
        for v in values:
            s = by_value[v]
            cell = "failed" if s is None else f"{s:.1f}"
            cells.append(f"**{cell}**" if v == chosen[name] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    choices = [f"{name}: {chosen[name] or 'none (no run gave ' + metric + ')'}"
               for name in scores]
    return lines + ["", "Chosen: " + "; ".join(choices) + "."]


def failed_line(failed):
    """failed: [(row name, seed)] -> one line naming each config's failed seeds."""
    by_name = collections.OrderedDict()
    for name, seed in failed:
        by_name.setdefault(name, []).append(str(seed))
    return "Failed runs: " + "; ".join(f"{name}: seed {', '.join(seeds)}"
                                       for name, seeds in by_name.items()) + "."


def _git(*args):
    try:
        out = subprocess.run(["git"] + list(args), cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def code_version(ignore=None):
    """`<short commit>` of the repository, "+ uncommitted changes" when a tracked file other
    than `ignore` (the results file itself) is modified."""
    commit = (_git("rev-parse", "--short", "HEAD") or "").strip() or "unknown commit"
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    ignore = os.path.relpath(os.path.abspath(ignore), REPO) if ignore else None
    changed = [line[3:] for line in status.splitlines() if line[3:] != ignore]
    return commit + (" + uncommitted changes" if changed else "")


def recorded_version(output_dir):
    """The code version a run dir recorded when its run started (None if it has no record)."""
    try:
        with open(os.path.join(output_dir, VERSION_FILE)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def versions_line(date, version, run_versions, weight_versions=()):
    """"Run on DATE at commit V." when every run started at `version`; otherwise the commits the
    runs (and, for --weights-from, their checkpoints) were made at, with run counts."""
    def counts(versions):
        c = collections.Counter(v or "not recorded" for v in versions)
        return ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in c.items())
    if all(v == version for v in run_versions) and not weight_versions:
        return f"Run on {date} (UTC) at commit {version}."
    line = (f"Written on {date} (UTC) at commit {version}; runs made at commit "
            f"{counts(run_versions)}")
    if weight_versions:
        line += f"; their checkpoints trained at commit {counts(weight_versions)}"
    return line + "."


def claim_section(claim, command, date, version, grid, table_lines, verdicts, failed,
                  run_versions=None, weight_versions=()):
    """The markdown section of one claim (ends with a newline)."""
    run_versions = [version] if run_versions is None else run_versions
    lines = [f"## {claim}", "", "```bash", command, "```", "",
             versions_line(date, version, run_versions, weight_versions), ""]
    if grid:
        lines += grid + [""]
    lines += table_lines + [""]
    if verdicts:
        lines += ["| metric | A → B | verdict |", "|---|---|---|"]
        lines += [f"| {m} | {pair} | {v} |" for m, pair, v in verdicts] + [""]
    elif len(table_lines) < 4:
        lines += ["No verdict: a comparison needs two configs.", ""]
    else:
        lines += ["No verdict: no two consecutive configs both have values of a verdict metric.",
                  ""]
    if failed:
        lines += [failed_line(failed), ""]
    return "\n".join(lines[:-1]) + "\n"


def replace_section(text, claim, section):
    """`text` with its `## <claim>` section (up to the next `## ` line or the end) replaced by
    `section`, or `section` appended; everything else kept byte for byte."""
    lines = text.splitlines(keepends=True)
    heading = f"## {claim}"
    start = next((i for i, line in enumerate(lines) if line.rstrip("\r\n") == heading), None)
    if start is None:
        if text and not text.endswith("\n"):
            text += "\n"
        return text + ("\n" if text and not text.endswith("\n\n") else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") \
        + "".join(lines[end:])


def write_section(path, claim, section):
    """Writes `section` into the results file `path` (created with its header if missing)."""
    text = RESULTS_HEADER
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(replace_section(text, claim, section))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", required=True,
                   help='yaml paths, each optionally with its own overrides: "C.yaml KEY VALUE"')
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--metrics", nargs="+", default=["bbox/AP", "bbox/AP50", "bbox/AP75",
                                                    "bbox/oLRP"])
    p.add_argument("--out", default="output/seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP / MKL threads per run (default: the CPUs divided by --jobs)")
    p.add_argument("--grid", nargs="+", metavar=("KEY", "VALUE"),
                   help="KEY V1 V2 ...: choose each config's value with the first seed")
    p.add_argument("--select", help="the metric of the grid choice (default: the first of "
                                    "--metrics)")
    p.add_argument("--claim", help="write the section `## CLAIM` of --results")
    p.add_argument("--results", help="the claims file (default docs/results.md with --claim)")
    p.add_argument("--verdict-metrics", nargs="+",
                   help="the metrics given a verdict (default: --metrics)")
    p.add_argument("--weights-from", metavar="OUT",
                   help="evaluate the model_final.pth of each run of an earlier --out OUT "
                        "(same configs, grid and seeds) with --opts instead of training")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs for every run")
    return p


def main(argv=None):
    p = get_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.grid is not None and len(args.grid) < 2:
        p.error("--grid needs a KEY and at least one value")
    if args.claim is not None and ("\n" in args.claim or not args.claim.strip()):
        p.error("--claim must be one non-empty line")
    try:
        configs = [parse_config(c) for c in args.configs]
    except ValueError as e:
        p.error(str(e))
    for naming in (row_name, dir_name):
        names = [naming(c, o) for c, o in configs]
        if len(set(names)) != len(names):
            p.error(f"two --configs items have the same name: {names}")
    select = args.select or args.metrics[0]
    threads = args.threads or default_threads(args.jobs)
    failed = []
    results_path = None
    if args.claim is not None:
        results_path = args.results or os.path.join(REPO, "docs", "results.md")
    version = code_version(ignore=results_path)
    all_runs = []  # every run of the grid and the seeds, for the versions line

    def weights(c, o, seed):
        if not args.weights_from:
            return None
        return os.path.join(run_dir(args.weights_from, c, o, seed), "model_final.pth")

    grid, chosen = None, {}
    if args.grid:
        key, values = args.grid[0], args.grid[1:]
        seed = args.seeds[0]
        runs = [Run(row_name(c, o + [key, v]), seed, c, run_dir(args.out, c, o + [key, v], seed),
                    args.opts + o + [key, v], weights(c, o + [key, v], seed))
                for c, o in configs for v in values]
        all_runs += runs
        done = iter(zip(runs, run_all(runs, args.jobs, threads, version)))
        scores = {}
        for c, o in configs:
            by_value = {}
            for v in values:
                run, metrics = next(done)
                if metrics is None:
                    failed.append((run.name, run.seed))
                by_value[v] = None if metrics is None else metrics.get(select, math.nan)
            scores[row_name(c, o)] = by_value
            chosen[row_name(c, o)] = choose_grid_value(by_value, select)
        grid = grid_lines(key, values, scores, chosen, select, seed)

    runs, rows = [], []
    for c, o in configs:
        if args.grid:
            value = chosen[row_name(c, o)]
            if value is None:  # no grid value to train the seeds with: an empty row
                rows.append((row_name(c, o), 0))
                continue
            o = o + [args.grid[0], value]
        rows.append((row_name(c, o), len(args.seeds)))
        runs += [Run(row_name(c, o), s, c, run_dir(args.out, c, o, s), args.opts + o,
                     weights(c, o, s)) for s in args.seeds]
    grid_dirs = {r.output_dir for r in all_runs}
    all_runs += [r for r in runs if r.output_dir not in grid_dirs]
    done = iter(zip(runs, run_all(runs, args.jobs, threads, version)))
    results = {}
    for name, n in rows:
        results[name] = []
        for _ in range(n):
            run, metrics = next(done)
            if metrics is None and (run.name, run.seed) not in failed:
                failed.append((run.name, run.seed))
            results[name].append(metrics)

    lines = table(results, args.metrics)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join((grid + [""] if grid else []) + lines) + "\n")
    print("\n".join((grid + [""] if grid else []) + lines))

    if args.claim is not None:
        command = ".venv/bin/python tools/run_seeds.py " + shlex.join(argv)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        verdicts = verdict_rows(results, args.verdict_metrics or args.metrics)
        run_versions = [recorded_version(r.output_dir) for r in all_runs]
        weight_versions = [recorded_version(os.path.dirname(r.weights)) for r in all_runs
                           if r.weights]
        write_section(results_path, args.claim.strip(), claim_section(
            args.claim.strip(), command, date, version, grid, lines, verdicts, failed,
            run_versions, weight_versions))
        print(f"wrote the section '## {args.claim.strip()}' of {results_path}")
    if failed:
        print(failed_line(failed), file=sys.stderr)
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
