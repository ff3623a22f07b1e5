"""PAA score voting (PAA §3.4): hand-made case and a per-detection loop reference."""
import math

import torch

from _matcher_refs import score_voting_reference
from rsloss_d2.modeling.matchers import score_voting


def test_hand_made_two_neighbours():
    # Detection = candidate 0; candidate 1 is shifted by 2 px (IoU 8/12 = 2/3), candidate 2 has the
    # other class only, candidate 3 is below the score threshold, candidate 4 does not overlap.
    det = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cands = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [1.0, 0.0, 11.0, 10.0],
                          [0.0, 1.0, 10.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([[0.9, 0.0], [0.6, 0.0], [0.01, 0.9], [0.04, 0.5], [0.9, 0.0]])
    out = score_voting(det, torch.tensor([0]), cands, scores)
    iou = 80 / 120
    p0, p1 = 0.9, math.exp(-((1 - iou) ** 2) / 0.025) * 0.6
    x1 = (p1 * 2.0) / (p0 + p1)
    expect = torch.tensor([[x1, 0.0, 10.0 + x1, 10.0]])
    torch.testing.assert_close(out, expect)
    # As class 1: neighbours candidate 2 (0.9, IoU 9/11) and candidate 3 (0.5, IoU 9/11).
    out1 = score_voting(det, torch.tensor([1]), cands, scores)
    torch.testing.assert_close(out1, torch.tensor([[0.5 * 0.9 / 1.4 * 2, 0.5 * 0.5 / 1.4 * 2,
                                                     10.0 + 0.9 / 1.4, 10.0 + 0.5 / 1.4]]))


def test_random_equals_per_detection_loop():
    gen = torch.Generator().manual_seed(0)
    m, c, d = 300, 5, 40
    xy = torch.rand((m, 2), generator=gen) * 200
    cands = torch.cat([xy, xy + 10 + torch.rand((m, 2), generator=gen) * 60], 1)
    scores = torch.rand((m, c), generator=gen) ** 3
    idx = torch.randperm(m, generator=gen)[:d]
    labels = torch.randint(0, c, (d,), generator=gen)
    dets = cands[idx]
    out = score_voting(dets, labels, cands, scores)
    ref = score_voting_reference(dets, labels, cands, scores)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    assert (out - dets).abs().max() > 1.0  # voting moved boxes
    # Other thresholds and sigma are honoured.
    out2 = score_voting(dets, labels, cands, scores, score_thr=0.3, sigma=0.1)
    ref2 = score_voting_reference(dets, labels, cands, scores, 0.3, 0.1)
    torch.testing.assert_close(out2.double(), ref2, rtol=1e-5, atol=1e-4)


def test_empty_and_isolated():
    cands = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([[0.9]])
    assert score_voting(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), cands,
                        scores).shape == (0, 4)
    # A detection without any neighbour above the threshold keeps its box (no NaN).
    det = torch.tensor([[50.0, 50.0, 60.0, 60.0]])
    assert torch.equal(score_voting(det, torch.tensor([0]), cands, scores), det)
    assert torch.equal(score_voting(det, torch.tensor([0]), torch.zeros((0, 4)),
                                    torch.zeros((0, 1))), det)


def test_half_precision_and_degenerate_detection():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand((50, 2), generator=gen) * 100
    cands = torch.cat([xy, xy + 20 + torch.rand((50, 2), generator=gen) * 20], 1)
    scores = torch.rand((50, 3), generator=gen)
    labels = torch.randint(0, 3, (10,), generator=gen)
    out = score_voting(cands[:10], labels, cands, scores)
    half = score_voting(cands[:10].half(), labels, cands.half(), scores.half())
    assert half.dtype == torch.float16 and not torch.isnan(half).any()
    torch.testing.assert_close(half.float(), out, rtol=0, atol=0.1)
    # A zero-area detection overlaps nothing (IoU 0): it keeps its box.
    det = torch.tensor([[30.0, 30.0, 30.0, 30.0]])
    assert torch.equal(score_voting(det, torch.tensor([0]), cands, scores), det)
