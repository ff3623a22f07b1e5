#!/usr/bin/env python
"""Matrix NMS time: ``rsloss_d2.layers.matrix_nms`` vs a per-pair Python loop reference.

    python tools/benchmarks/benchmark_matrix_nms.py --num-masks 500 --size 200

Random overlapping rectangle masks (N of size×size, 5 classes, scores sorted descending). The
batched function (one N×N intersection matmul, SOLOv2 paper Fig. 4) is timed over ``--repeat``
runs (median); the reference computes the IoU of every pair i < j of the same class with its own
tensor operations and the decays in Python (``--ref-masks`` masks, default all; its time grows
with N², so it is run once). Both results are compared on the reference's masks. Prints one
table and the speed-up.
"""
import argparse
import math
import statistics
import time


import torch

from rsloss_d2.layers import matrix_nms
from rsloss_d2.utils.benchmark import machine_line


def random_masks(n, size, num_classes, seed, device):
    g = torch.Generator().manual_seed(seed)
    yx = torch.randint(0, size // 2, (n, 2), generator=g)
    hw = torch.randint(size // 8, size // 2, (n, 2), generator=g)
    ar = torch.arange(size)
    rows = (ar[None] >= yx[:, :1]) & (ar[None] < (yx[:, :1] + hw[:, :1]))
    cols = (ar[None] >= yx[:, 1:]) & (ar[None] < (yx[:, 1:] + hw[:, 1:]))
    masks = rows[:, :, None] & cols[:, None, :]
    labels = torch.randint(0, num_classes, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    return masks.to(device), labels.to(device), scores.to(device)


def loop_reference(masks, labels, scores, sigma=2.0):
    """Per-pair loop: IoU of each same-class pair i < j, then the Gaussian decays in Python."""
    n = len(scores)
    lab = labels.tolist()
    flat = masks.reshape(n, -1).float()
    areas = flat.sum(1).tolist()
    iou = [[0.0] * n for _ in range(n)]
    for j in range(n):
        for i in range(j):
            if lab[i] == lab[j]:
                inter = float((flat[i] * flat[j]).sum())
                union = areas[i] + areas[j] - inter
                iou[i][j] = inter / union if union > 0 else 0.0
    comp = [max([iou[k][i] for k in range(i)], default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        decay = min([1.0] + [math.exp(-sigma * iou[i][j] ** 2) / math.exp(-sigma * comp[i] ** 2)
                             for i in range(j) if lab[i] == lab[j]])
        out.append(float(scores[j]) * decay)
    return torch.tensor(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-masks", type=int, default=500)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--ref-masks", type=int, default=0, help="masks for the loop (0: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    masks, labels, scores = random_masks(args.num_masks, args.size, args.num_classes, args.seed,
                                         args.device)
    cuda = args.device.startswith("cuda")
    matrix_nms(masks, labels, scores)  # warm-up
    times = []
    for _ in range(args.repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        matrix_nms(masks, labels, scores)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    t_fast = statistics.median(times)

    n_ref = args.ref_masks or args.num_masks
    start = time.perf_counter()
    ref = loop_reference(masks[:n_ref].cpu(), labels[:n_ref].cpu(), scores[:n_ref].cpu())
    t_ref = time.perf_counter() - start
    fast = matrix_nms(masks[:n_ref], labels[:n_ref], scores[:n_ref]).cpu()
    max_diff = float((fast.double() - ref.double()).abs().max())

    print(machine_line(args.device))
    print(f"{args.num_masks} masks of {args.size}x{args.size}, {args.num_classes} classes, "
          f"gaussian kernel sigma 2")
    print("| implementation | masks | time s |")
    print("|---|---|---|")
    print(f"| matrix_nms (batched, median of {args.repeat}) | {args.num_masks} | {t_fast:.4f} |")
    print(f"| per-pair Python loop (once) | {n_ref} | {t_ref:.2f} |")
    scale = (args.num_masks / n_ref) ** 2
    note = f" (loop time x {scale:.1f} for {args.num_masks} masks)" if n_ref != args.num_masks else ""
    print(f"speed-up: {t_ref * scale / t_fast:.0f}x{note}; max |difference| on {n_ref} masks: "
          f"{max_diff:.2e}")


if __name__ == "__main__":
    main()
