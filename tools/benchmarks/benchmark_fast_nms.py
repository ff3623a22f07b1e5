#!/usr/bin/env python
"""Speed of `rsloss_d2.layers.fast_nms` (one batched computation over all classes) against a
per-class loop doing the same Fast NMS class by class, and against torchvision's batched
(traditional, sequential) NMS for reference, on a COCO-size YOLACT test case.

    python tools/benchmarks/benchmark_fast_nms.py --boxes 3290 --classes 80 --top-k 200 --iters 30

Default case: the candidates of one 550x550 YOLACT image after the per-level top-1000
(1000 + 1000 + 972 + 243 + 75 = 3290 boxes) x 80 classes, random clustered boxes; scores
either sparse (one likely class per box, as a trained model) or dense (``--dense-scores``).
Checks that the loop gives exactly the same detections, then prints median / mean ms per call.
"""
import argparse
import os
import platform
import statistics
import sys
import time


import torch
from torchvision.ops import batched_nms

from rsloss_d2.layers.fast_nms import fast_nms, pairwise_iou_batched


def per_class_loop_fast_nms(boxes, scores, score_thr, iou_thr, top_k, max_num=-1):
    """Fast NMS computed class by class (the loop the batched version replaces)."""
    out_scores, out_classes, out_rows = [], [], []
    for c in range(scores.shape[1]):
        s, idx = scores[:, c].topk(min(top_k, scores.shape[0]), sorted=True)
        s, idx = s[s > score_thr], idx[s > score_thr]  # same shortcut as fast_nms
        iou = pairwise_iou_batched(boxes[idx][None])[0].triu_(diagonal=1)
        keep = (iou.max(dim=0).values <= iou_thr) & (s > score_thr)
        out_scores.append(s[keep])
        out_rows.append(idx[keep])
        out_classes.append(torch.full((int(keep.sum()),), c, dtype=torch.int64))
    s = torch.cat(out_scores)
    s, order = s.sort(descending=True)
    if max_num > 0:
        s, order = s[:max_num], order[:max_num]
    rows = torch.cat(out_rows)[order]
    return boxes[rows], s, torch.cat(out_classes)[order], rows


def traditional_nms(boxes, scores, score_thr, iou_thr, top_k, max_num=-1):
    """Per-class top_k, score threshold, torchvision batched (sequential) NMS."""
    s, idx = scores.t().topk(min(top_k, scores.shape[0]), dim=1, sorted=True)
    classes = torch.arange(scores.shape[1])[:, None].expand_as(idx)
    keep = s > score_thr
    s, idx, classes = s[keep], idx[keep], classes[keep]
    k = batched_nms(boxes[idx], s, classes, iou_thr)
    if max_num > 0:
        k = k[:max_num]
    return boxes[idx[k]], s[k], classes[k], idx[k]


def make_case(n, c, seed, dense=False):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n // 8 + 1, 2, generator=g) * 550
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 10
    wh = torch.rand(n, 2, generator=g) * 150 + 10
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1).clamp(0, 550)
    # dense: every class score uniform**4 (half of them above 0.05); sparse (a trained model):
    # each box has one likely class with a score uniform**2, the others uniform * 0.04
    if dense:
        return boxes, torch.rand(n, c, generator=g) ** 4
    scores = torch.rand(n, c, generator=g) * 0.04
    likely = torch.randint(0, c, (n,), generator=g)
    scores[torch.arange(n), likely] = torch.rand(n, generator=g) ** 2
    return boxes, scores


def time_fn(fn, args, iters, warmup=3):
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, statistics.fmean(times) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boxes", type=int, default=3290)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--max-num", type=int, default=100)
    p.add_argument("--score-thr", type=float, default=0.05)
    p.add_argument("--iou-thr", type=float, default=0.5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense-scores", action="store_true",
                   help="every class score random (default: one likely class per box)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    boxes, scores = make_case(args.boxes, args.classes, args.seed, args.dense_scores)
    call = (boxes, scores, args.score_thr, args.iou_thr, args.top_k, args.max_num)
    a, b = fast_nms(*call), per_class_loop_fast_nms(*call)
    same = all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    print(f"device: cpu ({platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())})")
    print(f"case: {args.boxes} boxes x {args.classes} classes "
          f"({'dense' if args.dense_scores else 'sparse'} scores), top_k {args.top_k}, "
          f"max_num {args.max_num}; per-class loop gives the same detections: {same}")
    rows = [("fast_nms (batched)", time_fn(fast_nms, call, args.iters)),
            ("fast NMS, per-class loop", time_fn(per_class_loop_fast_nms, call, args.iters)),
            ("traditional NMS (torchvision)", time_fn(traditional_nms, call, args.iters))]
    print("| method                         | median ms | mean ms |")
    print("|--------------------------------|-----------|---------|")
    for name, (med, mean) in rows:
        print(f"| {name:30s} | {med:9.2f} | {mean:7.2f} |")
    print(f"speed-up of the batched fast_nms over the per-class loop (medians): "
          f"{rows[1][1][0] / rows[0][1][0]:.2f}x")
    if not same:
        sys.exit("benchmark_fast_nms: the per-class loop disagrees with fast_nms")


if __name__ == "__main__":
    main()
