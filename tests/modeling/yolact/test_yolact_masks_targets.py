"""YOLACT prototype assembly and cropping on hand-made cases; anchors of the official config;
the batched MaxIoU assignment against a per-GT loop written from mmdet's rule."""
import math

import torch

from rsloss_d2.modeling.yolact.masks import (
    assemble_masks,
    assemble_masks_batched,
    boxes_to_mask_frame,
    crop_masks,
)
from rsloss_d2.modeling.yolact.targets import YOLACTTargets, assign_anchors, yolact_anchors


def test_assembly_is_sigmoid_of_prototypes_times_coefficients():
    protos = torch.tensor([[[1.0, 0.0], [0.0, 2.0]],     # prototype 0
                           [[0.0, 1.0], [3.0, 0.0]]])    # prototype 1
    coeffs = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    got = assemble_masks(protos, coeffs)
    s = torch.sigmoid
    want = torch.stack([
        torch.tensor([[s(torch.tensor(1.0)), s(torch.tensor(-1.0))],
                      [s(torch.tensor(-3.0)), s(torch.tensor(2.0))]]),
        torch.tensor([[s(torch.tensor(0.5)), s(torch.tensor(0.0))],
                      [s(torch.tensor(0.0)), s(torch.tensor(1.0))]]),
    ])
    assert torch.allclose(got, want)


def test_crop_follows_the_official_rule():
    masks = torch.ones(3, 5, 6)  # H 5, W 6
    boxes = torch.tensor([
        [1.5, 1.2, 3.3, 2.9],  # x1 0.5 -> cols 1..4 (0.5 <= p < 4.3); y 0.2..3.9 -> rows 1..3
        [4.0, 0.0, 2.0, 5.0],  # x1 > x2: x1 <- min(x1, x2) - 1 = 1, x2 <- x2 + 1 = 3: cols 1, 2
        [-3.0, 3.0, 9.0, 3.0],  # clamped to the mask; y 2..4 -> rows 2, 3
    ])
    out = crop_masks(masks, boxes)
    want = torch.zeros(3, 5, 6)
    want[0, 1:4, 1:5] = 1
    want[1, 0:5, 1:3] = 1
    want[2, 2:4, 0:6] = 1
    assert torch.equal(out, want)
    # differentiable w.r.t. the masks only inside the box
    m = torch.rand(1, 5, 6, requires_grad=True)
    crop_masks(m, boxes[:1]).sum().backward()
    assert torch.equal(m.grad, want[:1])


def test_boxes_to_mask_frame_and_batched_assembly():
    boxes = torch.tensor([[55.0, 110.0, 550.0, 275.0]])
    assert torch.allclose(boxes_to_mask_frame(boxes, 550, 138, 100),
                          torch.tensor([[10.0, 27.6, 100.0, 69.0]]))
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 4, 5, 6, generator=g)
    coeffs = torch.randn(7, 4, generator=g)
    image = torch.tensor([0, 0, 0, 2, 2, 2, 2])  # image 1 has none
    got = assemble_masks_batched(protos, coeffs, image)
    want = torch.cat([assemble_masks(protos[0], coeffs[:3]), assemble_masks(protos[2], coeffs[3:])])
    assert torch.allclose(got, want, atol=1e-6)
    assert assemble_masks_batched(protos, coeffs[:0], image[:0]).shape == (0, 5, 6)


def test_anchors_of_the_official_550_config():
    sizes = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    a = yolact_anchors(sizes, 550, [8, 16, 32, 64, 128], 3.0, [0.5, 1.0, 2.0])
    assert a.shape == (3 * sum(h * w for h, w in sizes), 4) == (19248, 4)
    c = 550 / 69 / 2
    w, h = 24 / math.sqrt(0.5), 24 * math.sqrt(0.5)  # ratio 0.5 = h / w: wide anchor
    assert torch.allclose(a[0], torch.tensor([c - w / 2, c - h / 2, c + w / 2, c + h / 2]))
    assert torch.allclose(a[1], torch.tensor([c - 12, c - 12, c + 12, c + 12]))
    # second location of level 0 is one stride to the right; level 4 starts with side 384
    assert torch.allclose(a[3, 0::2] - a[0, 0::2], torch.full((2,), 550 / 69))
    start4 = 3 * sum(h * w for h, w in sizes[:4])
    c4 = 55.0
    assert torch.allclose(a[start4 + 1], torch.tensor([c4 - 192, c4 - 192, c4 + 192, c4 + 192]))


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-6)


def reference_max_iou_assign(anchors, gts, neg, pos):
    """mmdet MaxIoUAssigner.assign_wrt_overlaps, min_pos_iou 0, gt_max_assign_all False,
    match_low_quality True, written as its loops: returns assigned (0 neg, -1 ignore, j+1)."""
    n = len(anchors)
    if not gts:
        return [0] * n
    ov = [[_iou(g, a) for a in anchors] for g in gts]
    assigned = [-1] * n
    for i in range(n):
        col = [ov[j][i] for j in range(len(gts))]
        m = max(col)
        j = col.index(m)  # first GT on ties
        if 0 <= m < neg:
            assigned[i] = 0
        if m >= pos:
            assigned[i] = j + 1
    for j in range(len(gts)):
        m = max(ov[j])
        if m >= 0.0:
            assigned[ov[j].index(m)] = j + 1  # later GTs overwrite
    return assigned


def test_batched_assignment_equals_the_per_gt_rule():
    g = torch.Generator().manual_seed(3)
    anchors = yolact_anchors([(8, 8), (4, 4), (2, 2)], 128, [8, 16, 32], 2.0, [0.5, 1.0, 2.0])
    per_image = []
    for n in (5, 0, 2, 9):
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 60 + 1
        boxes = torch.cat([xy, (xy + wh).clamp(max=128)], 1)
        if n == 2:
            boxes[1] = boxes[0]  # two identical GTs: both want the same best anchor
        if n == 9:
            boxes[8] = torch.tensor([60.0, 60.0, 61.0, 61.0])  # tiny: only its best anchor
        per_image.append(boxes)
    gmax = max(len(b) for b in per_image)
    boxes = torch.zeros(4, gmax, 4)
    valid = torch.zeros(4, gmax, dtype=torch.bool)
    for i, b in enumerate(per_image):
        boxes[i, :len(b)] = b
        valid[i, :len(b)] = True
    targets = YOLACTTargets(boxes, torch.zeros(4, gmax, dtype=torch.long), valid,
                            torch.zeros(4, gmax, 1, 1), torch.zeros(4, gmax, 0, 0))
    state, matched = assign_anchors(anchors, targets, 0.4, 0.5)
    for i, b in enumerate(per_image):
        ref = reference_max_iou_assign(anchors.tolist(), b.tolist(), 0.4, 0.5)
        got = [0 if s == 0 else (-1 if s < 0 else int(m) + 1)
               for s, m in zip(state[i].tolist(), matched[i].tolist())]
        assert got == ref, i
    assert (state == -1).any() and (state == 1).any()
    assert (state[1] == 0).all()  # no GT: every anchor negative
