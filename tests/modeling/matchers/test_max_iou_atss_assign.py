"""Batched anchor assignment (matchers/max_iou.py, valid_flags.py, atss.py) vs plain per-image /
per-anchor references written from mmdet's rules (``max_iou_assigner.py``, ``atss_assigner.py``,
``anchor_generator.valid_flags``): valid flags, MaxIoUAssigner with the ignore band and
low-quality matches, ATSS on the valid anchors of padded images."""
import math

import pytest
import torch
from torchvision.ops import box_iou

from rsloss_d2.modeling.matchers import (
    IGNORED,
    NEGATIVE,
    atss_assign,
    atss_match,
    max_iou_assign,
    valid_anchor_mask,
)


def _grid_anchors(grid_sizes, strides, sizes):
    """Anchors (level, y, x, a) centred on (x·s, y·s) (Detectron2 order, offset 0)."""
    out = []
    for (h, w), s, size in zip(grid_sizes, strides, sizes):
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        ctr = torch.stack([xs, ys], -1).reshape(-1, 1, 2).float()
        half = torch.tensor(size, dtype=torch.float32).reshape(1, -1, 1) / 2
        boxes = torch.cat([ctr - half, ctr + half], dim=-1)  # (HW, A, 4)
        out.append(boxes.reshape(-1, 4))
    return out


def test_valid_mask_is_anchor_centre_inside_the_image_padded_alone():
    grid, strides = [(8, 10), (4, 5), (2, 3)], [8, 16, 32]
    sizes = [(61, 80), (30, 41)]  # image 1 sits in the batch padding
    per_level = _grid_anchors(grid, strides, [[8, 12]] * 3)
    valid = valid_anchor_mask(per_level, strides, sizes, 32)
    anchors = torch.cat(per_level)
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    for i, (h, w) in enumerate(sizes):
        ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        expect = (ctr[:, 0] < pw) & (ctr[:, 1] < ph)  # mmdet valid_flags, as a centre test
        assert torch.equal(valid[i], expect)
    assert valid[0].all() and not valid[1].all()


def _ref_max_iou(anchors, gts, valid, pos_thr, neg_thr, min_pos=0.0):
    """mmdet MaxIoUAssigner (gt_max_assign_all, match_low_quality), loops over anchors / GTs."""
    r = len(anchors)
    out = [IGNORED] * r
    if len(gts) == 0:
        return torch.tensor([NEGATIVE if v else IGNORED for v in valid.tolist()])
    ious = box_iou(gts, anchors)
    for a in range(r):
        if not valid[a]:
            continue
        col = ious[:, a].tolist()
        best = max(col)
        g = col.index(best)  # first GT on ties
        if best < neg_thr:
            out[a] = NEGATIVE
        elif best >= pos_thr:
            out[a] = g
    for g in range(len(gts)):
        vals = [ious[g, a].item() for a in range(r) if valid[a]]
        gmax = max(vals)
        if gmax >= min_pos and gmax > 0:  # (rsloss_d2: a GT with best IoU 0 matches nothing)
            for a in range(r):
                if valid[a] and ious[g, a].item() == gmax:
                    out[a] = g
    return torch.tensor(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_iou_assign_equals_mmdet_rule(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat(_grid_anchors([(6, 6), (3, 3)], [8, 16], [[10, 16], [24, 32]]))
    gt_boxes = []
    for n in (5, 0, 3):
        xy = torch.randint(0, 40, (n, 2), generator=g).float()
        wh = torch.randint(4, 30, (n, 2), generator=g).float()
        gt_boxes.append(torch.cat([xy, xy + wh], 1))
    # exact ties: a GT equal to an anchor, twice (two GTs claim the same anchor: later wins)
    gt_boxes[2] = torch.cat([gt_boxes[2], anchors[[7, 7]]])
    valid = torch.ones(3, len(anchors), dtype=torch.bool)
    valid[0, -9:] = False
    for pos, neg in [(0.5, 0.4), (0.1, 0.1)]:
        got = max_iou_assign(anchors, gt_boxes, valid, pos, neg, 0.0, True)
        for i in range(3):
            expect = _ref_max_iou(anchors, gt_boxes[i], valid[i], pos, neg)
            assert torch.equal(got[i], expect), (i, pos, neg)
        assert (got[0, -9:] == IGNORED).all()
        assert (got[1] == NEGATIVE).all()  # an image without GT: every anchor negative
        assert got[2, 7] == len(gt_boxes[2]) - 1
    assert (got[2] == IGNORED).sum() == 0  # 0.1 / 0.1: no ignore band


def test_max_iou_degenerate_gt_matches_nothing():
    anchors = torch.cat(_grid_anchors([(4, 4)], [8], [[8]]))
    gts = [torch.tensor([[10.0, 10.0, 10.0, 20.0], [0.0, 0.0, 8.0, 8.0]])]  # zero width first
    valid = torch.ones(1, len(anchors), dtype=torch.bool)
    got = max_iou_assign(anchors, gts, valid, 0.5, 0.4, 0.0, True)[0]
    assert not (got == 0).any()  # mmdet would hand every zero-IoU anchor to it
    assert (got == 1).sum() >= 1


def test_atss_assign_uses_the_valid_anchors_of_each_image():
    grid, strides = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
    per_level = _grid_anchors(grid, strides, [[32, 40], [64, 80], [128, 160]])
    valid = valid_anchor_mask(per_level, strides, [(64, 64), (40, 30)], 32)
    gts = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 62.0]]),
           torch.tensor([[2.0, 3.0, 20.0, 26.0], [10.0, 12.0, 28.0, 38.0]])]
    got = atss_assign(per_level, gts, valid, topk=9)
    full = atss_match(per_level, gts[0], topk=9)
    assert torch.equal(got[0], full.clamp(min=NEGATIVE))
    counts = [len(a) for a in per_level]
    inside = [a[m] for a, m in zip(per_level, valid[1].split(counts))]
    assert torch.equal(got[1, valid[1]], atss_match(inside, gts[1], topk=9).clamp(min=NEGATIVE))
    assert (got[1, ~valid[1]] == IGNORED).all()
    assert (got[0] >= 0).any() and (got[1] >= 0).any()
    # the padding changes the candidates of image 1 (fewer anchors per level than in image 0)
    assert not torch.equal(got[1], atss_match(per_level, gts[1], topk=9).clamp(min=NEGATIVE))
