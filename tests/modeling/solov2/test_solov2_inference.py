"""SOLO inference (official ``get_seg``): point NMS, candidates, area filter, maskness, Matrix
NMS, chunks."""
import math

import torch
from detectron2.structures import BitMasks

from rsloss_d2.layers import matrix_nms
from rsloss_d2.modeling.solov2 import SOLOTestConfig, masks_to_boxes, point_nms
from rsloss_d2.modeling.solov2 import solo_inference_single


def test_point_nms_keeps_local_maxima_of_2x2_top_left_windows():
    x = torch.tensor([[0.1, 0.5, 0.2],
                      [0.3, 0.4, 0.6],
                      [0.9, 0.2, 0.1]])[None, None]
    # a cell survives if >= its top, left and top-left neighbours
    expected = torch.tensor([[0.1, 0.5, 0.0],
                             [0.3, 0.0, 0.6],
                             [0.9, 0.0, 0.0]])
    assert torch.equal(point_nms(x)[0, 0], expected)


def test_masks_to_boxes_matches_bitmasks():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 20, 17, generator=g) > 0.97
    masks[0] = False
    ref = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(masks_to_boxes(masks), ref)


def hand_case():
    """Stride-4 masks 8×8 (padded 32×32). Cells 0, 1 at stride 8, cell 2 at stride 8, cell 3."""
    probs = torch.zeros(4, 3)
    probs[0, 2], probs[1, 2], probs[2, 1], probs[3, 0] = 0.9, 0.6, 0.7, 0.05
    soft = torch.zeros(4, 8, 8)
    soft[0, 0:4, 0:4] = 0.8  # 16 px > 8: maskness 0.8 → score 0.72
    soft[1, 0:4, 0:4] = 0.9  # same mask, same class: maskness 0.9 → 0.54, decayed by exp(-2)
    soft[2, 0:2, 0:2] = 0.7  # 4 px <= 8: dropped by the area filter
    soft[3, 4:8, 4:8] = 0.9  # probability 0.05 <= score_thr: never a candidate
    strides = torch.tensor([8.0, 8.0, 8.0, 16.0])
    calls = []

    def soft_masks_of(cells):
        calls.append(cells.clone())
        return soft[cells]
    return probs, strides, soft_masks_of, calls


def test_hand_made_image():
    probs, strides, fn, calls = hand_case()
    res = solo_inference_single(probs, strides, fn, (32, 28), (64, 56), SOLOTestConfig())
    assert len(res) == 2
    assert res.pred_classes.tolist() == [2, 2]
    assert torch.allclose(res.scores, torch.tensor([0.72, 0.54 * math.exp(-2.0)]))
    assert res.pred_masks.dtype == torch.bool and res.pred_masks.shape == (2, 64, 56)
    # rows/cols 0..3 at stride 4 → 0..15 of the 32×28 input → about 0..31 of the 64×56 image
    box = res.pred_boxes.tensor[0]
    assert box[0] == 0 and box[1] == 0 and 30 <= box[2] <= 34 and 30 <= box[3] <= 34
    assert torch.equal(res.pred_boxes.tensor, masks_to_boxes(res.pred_masks))
    assert sorted(calls[0].tolist()) == [0, 1, 2]  # candidates: probability > 0.1 only

    one = solo_inference_single(probs, strides, fn, (32, 28), (64, 56),
                                SOLOTestConfig(max_per_img=1))
    assert len(one) == 1 and math.isclose(float(one.scores[0]), 0.72, rel_tol=1e-6)
    strict = solo_inference_single(probs, strides, fn, (32, 28), (64, 56),
                                   SOLOTestConfig(update_thr=0.1))
    assert len(strict) == 1  # 0.54·e^-2 = 0.073 < 0.1


def test_all_zero_predictions_give_empty_instances():
    probs, strides, fn, _ = hand_case()
    for p in (torch.zeros_like(probs), probs * 0 + 0.05):
        res = solo_inference_single(p, strides, fn, (32, 28), (40, 30), SOLOTestConfig())
        assert len(res) == 0 and res.pred_masks.shape == (0, 40, 30)
        assert res.pred_boxes.tensor.shape == (0, 4) and res.scores.shape == (0,)
    # candidates whose masks are all empty / below the area filter
    res = solo_inference_single(probs, strides, lambda c: torch.zeros(len(c), 8, 8), (32, 28),
                                (40, 30), SOLOTestConfig())
    assert len(res) == 0


def test_chunks_bounded_by_nms_pre_and_same_result():
    """Many candidates: masks are computed at most nms_pre at a time and the result equals
    Matrix NMS on the nms_pre best candidates computed directly."""
    g = torch.Generator().manual_seed(0)
    n, c = 60, 3
    probs = torch.rand(n, c, generator=g) * 0.8
    soft = torch.zeros(n, 16, 16)
    for k in range(n):
        y, x = torch.randint(0, 10, (2,), generator=g).tolist()
        soft[k, y:y + 6, x:x + 6] = 0.55 + 0.4 * torch.rand(1, generator=g)
    strides = torch.full((n,), 8.0)
    sizes = []

    def fn(cells):
        sizes.append(len(cells))
        return soft[cells]
    cfg = SOLOTestConfig(nms_pre=7, max_per_img=100)
    res = solo_inference_single(probs, strides, fn, (64, 64), (64, 64), cfg)
    assert max(sizes) <= 7 and sum(sizes) > 7 * 3

    # direct computation, all candidates at once
    cells, classes = (probs > 0.1).nonzero(as_tuple=True)
    m = soft[cells]
    binary = m > 0.5
    area = binary.sum((1, 2)).float()
    scores = probs[cells, classes] * (m * binary).sum((1, 2)) / area
    top = torch.argsort(scores, descending=True)[:7]
    decayed = matrix_nms(binary[top], classes[top], scores[top])
    keep = decayed >= 0.05
    expected = torch.sort(decayed[keep], descending=True).values
    assert torch.allclose(res.scores, expected)
