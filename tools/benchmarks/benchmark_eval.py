#!/usr/bin/env python
"""Time rsloss_d2's COCO / LVIS evaluation against pycocotools, faster-coco-eval and lvis-api.

    python tools/benchmarks/benchmark_eval.py          # COCO: 1,000 images x 100 dets, 80 classes
    python tools/benchmarks/benchmark_eval.py --lvis-images 2000   # + LVIS, 1,203 classes

Everything runs in this one process, side by side, on identical seeded synthetic data
(`rsloss_d2.evaluation.synthetic`), from the ground-truth dict and the list of result dicts to
the numbers (index building, loading the results, matching, accumulating, summarising; the copies
the APIs need because they modify their inputs are made outside the timed part). Each method
runs `--repeat` times and its fastest run is reported, since the machine may be shared.

COCO rows: pycocotools' `COCOeval` AP; faster-coco-eval's C++ `COCOeval_faster` AP; rsloss_d2's
`compute_coco_ap` (AP), `compute_olrp` (oLRP) and `evaluate_coco` (AP + oLRP + ranking quality
from one matching, what the evaluator runs). LVIS rows: lvis-api's `LVISEval` AP, rsloss_d2's
`compute_lvis_ap` and `evaluate_lvis` (AP + oLRP + ranking quality). The targets: the whole COCO
evaluation <= 0.2x pycocotools and <= 1.5x faster-coco-eval; the whole LVIS one <= 0.2x lvis-api.
"""
import argparse
import contextlib
import copy
import gc
import io
import logging
import math
import platform
import resource
import time
import warnings

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices at import

from rsloss_d2.evaluation import (  # noqa: E402
    compute_coco_ap, compute_lvis_ap, compute_olrp, evaluate_coco, evaluate_lvis)
from rsloss_d2.evaluation.synthetic import make_synthetic_coco, make_synthetic_lvis  # noqa: E402

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def olrp_from_cocoeval(ev, tau=0.5, max_det=100):
    """Class oLRP (fractions; -1 = no GT, as the official LRP-Error code) for each area range,
    recomputed from pycocotools' own per-image matches at iouThrs[0]."""
    p = ev.params
    K, A, n_img = len(p.catIds), len(p.areaRng), len(p.imgIds)
    out = -np.ones((K, A))
    for k, cat in enumerate(p.catIds):
        for a in range(A):
            E = [e for e in ev.evalImgs[(k * A + a) * n_img:(k * A + a + 1) * n_img] if e]
            if not E:
                continue
            npig = sum(int((e["gtIgnore"] == 0).sum()) for e in E)
            if npig == 0:
                continue
            ious = []
            for e in E:
                cols = {g["id"]: j for j, g in enumerate(ev._gts[e["image_id"], cat])}
                m = e["dtMatches"][0, :max_det]
                iou_mat = ev.ious[e["image_id"], cat]
                ious.append([iou_mat[j, cols[int(g)]] if g else 0.0 for j, g in enumerate(m)])
            scores = np.concatenate([e["dtScores"][:max_det] for e in E])
            order = np.argsort(-scores, kind="mergesort")
            dtm = np.concatenate([e["dtMatches"][0, :max_det] for e in E])[order]
            dtig = np.concatenate([e["dtIgnore"][0, :max_det] for e in E])[order].astype(bool)
            iou = np.concatenate([np.asarray(i, dtype=float) for i in ious])[order]
            tps = (dtm != 0) & ~dtig
            fps = (dtm == 0) & ~dtig
            tp, fp = np.cumsum(tps).astype(float), np.cumsum(fps).astype(float)
            if len(tp) == 0 or tp[-1] == 0:
                out[k, a] = 1.0
                continue
            loc = tp - np.cumsum(iou * tps)
            fn = npig - tp
            out[k, a] = np.min((loc / (1 - tau) + fp + fn) / (tp + fp + fn))
    return out


def _best_of(repeat, fn, *args):
    """(result of the last run, fastest wall time) of `fn(*copies)`; `args` are factories of
    fresh inputs, called outside the timed part."""
    best, res = math.inf, None
    for _ in range(repeat):
        inputs = [a() for a in args]
        t0 = time.perf_counter()
        res = fn(*inputs)
        best = min(best, time.perf_counter() - t0)
    return res, best


def _pycocotools_ap(gt, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _faster_coco_eval_ap(gt, dets):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    coco_gt = FasterCOCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _lvis_api_ap(gt, dets):
    from lvis import LVIS, LVISEval, LVISResults

    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = gt
    lvis_gt._create_index()
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, dets), "bbox")
    ev.run()
    return ev


def _table(rows, refs):
    """Markdown table of (method, seconds) rows with time ratios to the rows named in `refs`
    ({column name: row name})."""
    times = dict(rows)
    head = f"| {'method':<54} | {'time (s)':>8} |" + "".join(f" {'vs ' + n:>20} |" for n in refs)
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for name, t in rows:
        cells = "".join(f" {t / times[r]:>19.3f}x |" for r in refs.values())
        print(f"| {name:<54} | {t:8.3f} |" + cells)


def run_coco(args):
    gt, dets = make_synthetic_coco(num_images=args.images, num_classes=args.classes,
                                   dets_per_image=args.dets, seed=args.seed)
    gt = dict(gt, info={}, licenses=[])
    crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"COCO set: {args.images} images, {args.classes} classes, {len(gt['annotations'])} "
          f"GTs ({crowd} crowd), {len(dets)} detections (seed {args.seed})")
    fresh_gt, fresh_dets = (lambda: copy.deepcopy(gt)), (lambda: copy.deepcopy(dets))
    same_gt, same_dets = (lambda: gt), (lambda: dets)
    ev, t_py = _best_of(args.repeat, _pycocotools_ap, fresh_gt, fresh_dets)
    rows = [("pycocotools COCOeval: AP", t_py)]
    fast = None
    try:
        fast, t_fast = _best_of(args.repeat, _faster_coco_eval_ap, fresh_gt, fresh_dets)
        rows.append(("faster-coco-eval COCOeval_faster (C++): AP", t_fast))
    except ImportError:
        print("faster-coco-eval is not installed (tools/install.sh installs it): row left out")
    ap, t_ap = _best_of(args.repeat, compute_coco_ap, same_gt, same_dets)
    olrp, t_olrp = _best_of(args.repeat, compute_olrp, same_gt, same_dets)
    full, t_full = _best_of(args.repeat, evaluate_coco, same_gt, same_dets)
    rows += [("rsloss_d2 compute_coco_ap: AP", t_ap), ("rsloss_d2 compute_olrp: oLRP", t_olrp),
             ("rsloss_d2 evaluate_coco: AP + oLRP + ranking quality", t_full)]
    print()
    refs = {"pycocotools": rows[0][0]}
    if fast is not None:
        refs["faster-coco-eval"] = rows[1][0]
    _table(rows, refs)
    print()
    diff = max(abs(ap[k] - ev.stats[i]) for i, k in enumerate(AP_KEYS))
    diff_full = max(abs(full["ap"][k] - ev.stats[i]) for i, k in enumerate(AP_KEYS))
    print(f"AP {ap['AP'] * 100:.2f}, max |difference| of AP..APl with pycocotools = "
          f"{max(diff, diff_full):.3g}" + (
              f", with faster-coco-eval = "
              f"{max(abs(ap[k] - fast.stats[i]) for i, k in enumerate(AP_KEYS)):.3g}"
              if fast is not None else ""))
    rq = full["ranking"]
    print(f"oLRP {olrp['oLRP']:.2f}; ranking quality: spearman {rq['spearman']:.3f}, class mean "
          f"{rq['spearman_class_mean']:.3f}, top-10 IoU {rq['top10_iou']:.3f} vs mean IoU "
          f"{rq['mean_iou']:.3f} over {rq['num_tp']} true positives")
    met = t_full <= 0.2 * t_py and (fast is None or t_full <= 1.5 * t_fast)
    print(f"target (AP + oLRP + ranking quality <= 0.2x pycocotools and <= 1.5x "
          f"faster-coco-eval): {'met' if met else 'NOT met'}")
    if args.check:
        with contextlib.redirect_stdout(io.StringIO()):
            c = COCO()
            c.dataset = copy.deepcopy(gt)
            c.createIndex()
            e = COCOeval(c, c.loadRes(copy.deepcopy(dets)), "bbox")
            e.params.iouThrs = np.array([0.5])
            e.evaluate()
        ref = olrp_from_cocoeval(e)
        worst = 0.0
        for a, sfx in enumerate(("", "_s", "_m", "_l")):
            vals = ref[:, a][ref[:, a] > -1]
            want = float(np.mean(vals) * 100) if len(vals) else math.nan
            got = (olrp["oLRP" + sfx], full["olrp"]["oLRP" + sfx])
            worst = max(worst, *(abs(want - g) for g in got))
        for k, cat in enumerate(e.params.catIds):
            if ref[k, 0] > -1:
                worst = max(worst, abs(ref[k, 0] * 100 - olrp["per_class"][cat]["oLRP"]))
        print(f"check against pycocotools' matching: max |difference| of oLRP (per class and "
              f"the four area means) = {worst:.3g}")


def _peak_memory_gb():
    """Peak resident memory of this process so far (GB; Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_lvis(args):
    def make():
        return make_synthetic_lvis(num_images=args.lvis_images, num_classes=args.lvis_classes,
                                   dets_per_image=args.lvis_dets, seed=args.seed)

    gt, dets = make()
    print(f"LVIS set: {args.lvis_images} images, {args.lvis_classes} classes, "
          f"{len(gt['annotations'])} GTs, {len(dets)} detections (seed {args.seed})")
    logging.getLogger("lvis").setLevel(logging.ERROR)
    rows, api = [], None
    if not args.skip_lvis_api:
        # lvis-api modifies its inputs: it gets this set, rsloss_d2 the same set made again from
        # the seed once lvis-api is done, so that one copy at a time is in memory (the LVIS-val
        # size needs tens of GB for lvis-api alone)
        ev, t_api = _best_of(1, _lvis_api_ap, lambda: gt, lambda: dets)
        api = dict(ev.results)
        del ev, gt, dets
        gc.collect()
        rows.append(("lvis-api LVISEval: AP", t_api))
        print(f"peak resident memory with lvis-api: {_peak_memory_gb():.1f} GB")
        gt, dets = make()
    same_gt, same_dets = (lambda: gt), (lambda: dets)
    ap, t_ap = _best_of(args.repeat, compute_lvis_ap, same_gt, same_dets)
    full, t_full = _best_of(args.repeat, evaluate_lvis, same_gt, same_dets)
    rows += [("rsloss_d2 compute_lvis_ap: AP", t_ap),
             ("rsloss_d2 evaluate_lvis: AP + oLRP + ranking quality", t_full)]
    print()
    _table(rows, {"lvis-api": rows[0][0]} if api is not None else {})
    print()
    line = f"AP {ap['AP'] * 100:.2f}, APr {ap['APr'] * 100:.2f}"
    if api is not None:
        diff = max(abs(d[k] - api[k]) for d in (ap, full["ap"]) for k in ap)
        line += f", max |difference| of the AP entries with lvis-api = {diff:.3g}"
        met = t_full <= 0.2 * t_api
        line += (f"\ntarget (AP + oLRP + ranking quality <= 0.2x lvis-api): "
                 f"{'met' if met else 'NOT met'}")
    print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (fastest kept)")
    parser.add_argument("--check", action="store_true",
                        help="also recompute oLRP from pycocotools' matches and compare (slow)")
    parser.add_argument("--lvis-images", type=int, default=0,
                        help="also an LVIS set of this many images (LVIS v1 val: 19,809)")
    parser.add_argument("--lvis-classes", type=int, default=1203)
    parser.add_argument("--lvis-dets", type=int, default=300)
    parser.add_argument("--skip-lvis-api", action="store_true",
                        help="time only rsloss_d2 on the LVIS set (lvis-api takes very long)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    if args.images:
        run_coco(args)
    if args.lvis_images:
        print()
        run_lvis(args)


if __name__ == "__main__":
    main()
