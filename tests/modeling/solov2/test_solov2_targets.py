"""SOLO grid targets on a hand-made batch: centre sampling, scale ranges, cell conflicts, masks."""
import math

import pytest
import torch

from rsloss_d2.losses import dice_coefficient, dice_loss
from rsloss_d2.modeling.solov2 import build_solo_targets, level_cells, rescale_masks

from _solo_helpers import GRIDS, RANGES, SIGMA, hand_batch, make_instances


def by_hand():
    """The official target rule worked by hand for hand_batch() (cells over levels: 0..15, 16..19).

    A: centre (15.5, 47.5), w = h = 16, half = 0.5·0.2·16 = 1.6, in both ranges.
      S=4: centre cell (0, 2); box rows floor(13.9/16)=0..floor(17.1/16)=1, cols 2..3
           → rows 0..1 × cols 2..3 → cells 2, 3, 6, 7.
      S=2: centre cell (0, 1); box rows 0..0, cols 1..1 → cell 1 → 17.
    B: centre (31.5, 31.5), w = h = 32 (only in [10, 100]), half = 3.2.
      S=2: centre cell (0, 0); box rows floor(28.3/32)=0..floor(34.7/32)=1, cols 0..1
           → cells 0, 1, 2, 3 → 16, 17, 18, 19 (17 shared with A).
    """
    grid_order = [(0, 2), (0, 3), (0, 6), (0, 7), (0, 17), (1, 16), (1, 17), (1, 18), (1, 19)]
    return grid_order


@pytest.mark.parametrize("mode", ["all", "last", "first"])
def test_hand_made_assignment(mode):
    t = build_solo_targets(hand_batch(), (64, 64), GRIDS, RANGES, SIGMA, num_classes=8,
                           cell_assignment=mode)
    grid_order = by_hand()
    assert t.labels.shape == (3, 20)
    cls = {0: 1, 1: 5}
    owner = {}
    for gt, cell in grid_order:  # last GT wins unless "first"
        if mode != "first" or cell not in owner:
            owner[cell] = gt
    expected_labels = torch.full((3, 20), 8)
    for cell, gt in owner.items():
        expected_labels[0, cell] = cls[gt]
    assert torch.equal(t.labels, expected_labels)
    assert int(t.num_pos_cells) == 8  # distinct cells
    pairs = list(zip(t.pos_gt.tolist(), t.pos_cell.tolist()))
    assert (t.pos_image == 0).all()
    if mode == "all":  # official SOLOv2: every (GT, cell) pair, in grid order
        assert pairs == grid_order
        assert t.pos_level.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    else:
        assert pairs == sorted(((gt, cell) for cell, gt in owner.items()), key=lambda p: p[1])
        assert dict((c, g) for g, c in pairs)[17] == (0 if mode == "first" else 1)
        assert t.pos_level.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert t.gt_masks.shape == (4, 64, 64) and not t.gt_masks[3].any()
    assert t.gt_masks[2, 48:].sum() == 0  # image 1 zero-padded below its 48 rows


def official_cells(cy, cx, w, h, s, sigma, hu, wu):
    """Literal transcription of the official float expressions (``solov2_target_single``)."""
    half_w, half_h = 0.5 * sigma * w, 0.5 * sigma * h
    coord_w = int((cx / wu) // (1.0 / s))
    coord_h = int((cy / hu) // (1.0 / s))
    top_box = max(0, int(((cy - half_h) / hu) // (1.0 / s)))
    down_box = min(s - 1, int(((cy + half_h) / hu) // (1.0 / s)))
    left_box = max(0, int(((cx - half_w) / wu) // (1.0 / s)))
    right_box = min(s - 1, int(((cx + half_w) / wu) // (1.0 / s)))
    top, down = max(top_box, coord_h - 1), min(down_box, coord_h + 1)
    left, right = max(coord_w - 1, left_box), min(right_box, coord_w + 1)
    return [i * s + j for i in range(top, down + 1) for j in range(left, right + 1)]


def test_level_cells_match_official_expressions():
    g = torch.Generator().manual_seed(0)
    hu, wu = 96, 128
    n = 300
    cy = torch.rand(n, generator=g, dtype=torch.float64) * (hu - 1)
    cx = torch.rand(n, generator=g, dtype=torch.float64) * (wu - 1)
    w = torch.rand(n, generator=g, dtype=torch.float64) * 200
    h = torch.rand(n, generator=g, dtype=torch.float64) * 200
    for s in (40, 12, 5):
        cells, valid = level_cells(cy, cx, w, h, s, 0.2, (hu, wu))
        for k in range(n):
            got = cells[k][valid[k]].tolist()
            assert got == official_cells(float(cy[k]), float(cx[k]), float(w[k]), float(h[k]),
                                         s, 0.2, hu, wu), (s, k)


def test_rescale_masks_like_imrescale():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 0:4, 2:6] = True
    # bilinear samples at pixel 1.5 / 5.5: columns 1|2 and 5|6 average to 0.5, rounded up
    assert rescale_masks(m, 4).tolist() == [[[1.0, 1.0], [0.0, 0.0]]]
    assert rescale_masks(m, 1).equal(m.float())


def test_dice_by_hand():
    p = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    m = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # 2·1.5 / ((1.25 + 0.001) + (2 + 0.001)) and 0 / (0.001 + 0.001)
    expected = torch.tensor([3.0 / 3.252, 0.0])
    assert torch.allclose(dice_coefficient(p, m), expected)
    assert torch.allclose(dice_loss(p, m), 1 - expected)
    q = p.clone().requires_grad_(True)
    dice_loss(q, m).sum().backward()
    # d/dp of 1 − 2a/(b + c): −(2m(b + c) − 2a·2p)/(b + c)²
    a, bc = 1.5, 3.252
    grad = -(2 * m[0] * bc - 2 * a * 2 * p[0]) / bc**2
    assert torch.allclose(q.grad[0], grad)
    assert dice_coefficient(p[:0], m[:0]).shape == (0,)


def test_no_gt_anywhere():
    batch = [make_instances((64, 64), [], [], []), make_instances((32, 64), [], [], [])]
    t = build_solo_targets(batch, (64, 64), GRIDS, RANGES, SIGMA, 8, "first")
    assert (t.labels == 8).all() and t.pos_gt.numel() == 0 and int(t.num_pos_cells) == 0
    assert math.isclose(float(t.num_pos_cells), 0.0)
