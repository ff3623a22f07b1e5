"""Plain reference implementations of the dense-detector matchers, written from the spec
(models.md §3, §4) and sklearn's EM, with loops over objects: the oracles of the matcher tests and
of ``tools/benchmark_paa.py``."""
import math

import numpy as np
import torch


# ---------------------------------------------------------------- ATSS (models.md §3, Alg. 1)
def iou_py(a, b):
    """IoU of two XYXY boxes given as Python float sequences (mmdet: union clamped at 1e-6)."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def atss_reference(anchors_per_level, gt_boxes, topk=9):
    """ATSS, one ground truth at a time. Distances in float32 as the anchors (so that distance
    ties are the same ties); ties at the k-th place -> lower anchor index."""
    levels = [a.float() for a in anchors_per_level]
    anchors = torch.cat(levels).tolist()
    gts = gt_boxes.float().tolist()
    result = [-1] * len(anchors)
    best = [None] * len(anchors)  # (iou, gt index) of the current owner
    for g, gt in enumerate(gts):
        gc = torch.tensor([(gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2], dtype=torch.float32)
        cands, start = [], 0
        for lvl in levels:
            ctr = (lvl[:, :2] + lvl[:, 2:]) / 2
            d = ((ctr[:, 0] - gc[0]) ** 2 + (ctr[:, 1] - gc[1]) ** 2).sqrt().tolist()
            order = sorted(range(len(d)), key=lambda i: (d[i], i))[: min(topk, len(d))]
            cands += [start + i for i in order]
            start += len(d)
        ious = [iou_py(anchors[i], gt) for i in cands]
        if len(ious) < 2:
            continue  # std of one value is undefined (NaN): no positive
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cands, ious):
            a = anchors[i]
            cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01
            if v >= mean + std and inside:
                if best[i] is None or v > best[i][0]:  # equal IoU: the earlier (lower) GT stays
                    best[i] = (v, g)
                    result[i] = g
    return torch.tensor(result, dtype=torch.long)


def grid_anchors(size, stride, sizes, offset=0.0):
    """Square anchors of the given side lengths at every cell of a size×size grid, location-major
    (all anchors of one location adjacent, as Detectron2's anchor generator)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    ctr = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * stride + offset
    half = torch.tensor(sizes, dtype=torch.float32) / 2
    boxes = torch.cat([ctr[:, None, :] - half[None, :, None], ctr[:, None, :] + half[None, :, None]],
                      dim=2)
    return boxes.reshape(-1, 4)
