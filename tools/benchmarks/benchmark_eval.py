#!/usr/bin/env python
"""Time rsloss_d2's vectorised oLRP against pycocotools' COCOeval on the same synthetic set.

    python tools/benchmarks/benchmark_eval.py                      # 5,000 images, 80 classes, 100 dets/image
    python tools/benchmarks/benchmark_eval.py --images 500 --classes 20

Both run in this one process, side by side, on identical data (seeded, see
`rsloss_d2.evaluation.synthetic`): pycocotools' `COCOeval(gt, dt, "bbox").evaluate()` +
`accumulate()` (the part that the LRP-Error evaluation extends; building the COCO objects and
`loadRes` are not timed), and `compute_olrp` (all four area ranges, from the raw result dicts,
parsing included). The issue's target is a ratio of at least 5.
"""
import argparse
import contextlib
import copy
import io
import math
import platform
import time
import warnings

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices at import

from rsloss_d2.evaluation.olrp import compute_olrp
from rsloss_d2.evaluation.synthetic import make_synthetic_coco


def olrp_from_cocoeval(ev, tau=0.5, max_det=100):
    """Class oLRP (fractions; -1 = no GT, as the official code) for each area range, recomputed
    from pycocotools' own per-image matches at iouThrs[0] (spec olrp.md §2 steps 1-7)."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="also recompute oLRP from pycocotools' matches and compare (slow)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    gt, dets = make_synthetic_coco(num_images=args.images, num_classes=args.classes,
                                   dets_per_image=args.dets, seed=args.seed)
    t_gen = time.perf_counter() - t0
    crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"synthetic set: {args.images} images, {args.classes} classes, "
          f"{len(gt['annotations'])} GTs ({crowd} crowd), {len(dets)} detections "
          f"(seed {args.seed}, generated in {t_gen:.1f} s)")
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(copy.deepcopy(gt), info={}, licenses=[])
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        t0 = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        t_coco = time.perf_counter() - t0
        ev.summarize()

    t0 = time.perf_counter()
    res = compute_olrp(gt, dets)
    t_olrp = time.perf_counter() - t0

    rows = [("pycocotools COCOeval evaluate()+accumulate() [bbox]", t_coco, 1.0),
            ("rsloss_d2 compute_olrp [bbox, 4 area ranges]", t_olrp, t_coco / t_olrp)]
    print()
    print(f"| {'method':<52} | {'time (s)':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 10}|")
    for name, t, r in rows:
        print(f"| {name:<52} | {t:8.2f} | {r:7.1f}x |")
    print()
    print(f"AP = {ev.stats[0] * 100:.2f} (pycocotools); oLRP = {res['oLRP']:.2f}, "
          f"loc {res['oLRP_loc']:.2f}, FP {res['oLRP_FP']:.2f}, FN {res['oLRP_FN']:.2f}; "
          f"oLRP s/m/l = {res['oLRP_s']:.2f} / {res['oLRP_m']:.2f} / {res['oLRP_l']:.2f}")
    target = "met" if t_olrp * 5 <= t_coco else "NOT met"
    print(f"target (compute_olrp <= 1/5 of pycocotools' time): {target}")
    if args.check:
        ref = olrp_from_cocoeval(ev)
        worst = 0.0
        for a, sfx in enumerate(("", "_s", "_m", "_l")):
            vals = ref[:, a][ref[:, a] > -1]
            want = float(np.mean(vals) * 100) if len(vals) else math.nan
            worst = max(worst, abs(want - res["oLRP" + sfx]))
        for k, cat in enumerate(ev.params.catIds):
            if ref[k, 0] > -1:
                worst = max(worst, abs(ref[k, 0] * 100 - res["per_class"][cat]["oLRP"]))
        print(f"check against pycocotools' matching: max |difference| of oLRP (per class and "
              f"the four area means) = {worst:.3g}")


if __name__ == "__main__":
    main()
