"""ATSS assignment (ATSS Alg. 1): hand-computed cases of the paper's rule, a per-GT reference on
random cases, empty / degenerate / single-candidate inputs, and the batched variant."""
import torch

from _matcher_refs import atss_reference, grid_anchors
from rsloss_d2.modeling.matchers import atss_match, atss_match_batch


def _row(centres_x, side=10.0):
    """One level of side×side anchors centred at (x, side/2)."""
    return torch.tensor([[x - side / 2, 0.0, x + side / 2, side] for x in centres_x])


def test_hand_made_threshold_and_centre_rule():
    level = _row([5, 15, 25, 35])
    # GT centre (15, 5): candidates (k=3) anchors 0, 1, 2 at distances 10, 0, 10.
    # IoUs 20/220, 100/140, 20/220 -> mean 0.2987, unbiased std 0.3599, thr 0.6586:
    # only anchor 1 (IoU 0.714, centre 7 px inside) is positive.
    gt = torch.tensor([[8.0, 0.0, 22.0, 10.0]])
    assert atss_match([level], gt, topk=3).tolist() == [-1, 0, -1, -1]
    # GT centre (20, 5): candidates anchors 1, 2 (distance 5) and, of the tie 0/3 at distance 15,
    # the lower index 0. IoUs 1/3, 1/3, 0 -> thr 0.2222 + 0.1925 = 0.4147 > 1/3: no positive.
    gt = torch.tensor([[15.0, 0.0, 25.0, 10.0]])
    assert atss_match([level], gt, topk=3).tolist() == [-1, -1, -1, -1]
    # GT [14.98, 0, 20, 10]: candidates 1, 2, 0; IoUs 0.502, 0, 0 -> thr 0.167 + 0.290 = 0.457.
    # Anchor 1 passes the IoU test; its centre x = 15 is 0.02 px inside the GT's left side (> 0.01).
    gt = torch.tensor([[14.98, 0.0, 20.0, 10.0]])
    assert atss_match([level], gt, topk=3).tolist() == [-1, 0, -1, -1]
    # Same with x1 = 14.995: 0.005 px inside, not more than 0.01 -> no positive.
    gt = torch.tensor([[14.995, 0.0, 20.0, 10.0]])
    assert atss_match([level], gt, topk=3).tolist() == [-1, -1, -1, -1]
    # Four anchors symmetric about the GT, all IoU 0.25: std 0, thr = 0.25, and IoU >= thr holds.
    quad = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0],
                         [0.0, 10.0, 10.0, 20.0], [10.0, 10.0, 20.0, 20.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    assert atss_match([quad], gt, topk=4).tolist() == [0, 0, 0, 0]


def test_hand_made_conflicts_and_levels():
    small = _row([5, 15, 25, 35])
    big = _row([10, 30], side=20.0)
    # GT 0 = anchor 1 of `small` exactly; GT 1 slightly larger; GT 2 = copy of GT 0.
    gts = torch.tensor([[10.0, 0.0, 20.0, 10.0], [9.0, 0.0, 21.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    # Each GT: candidates small {1, 0, 2} (k=3) and big {0, 1} (both: A_l = 2 < k).
    # GT 0: IoUs small (0, 1, 0), big (0.25, 0) -> mean 0.25, std 0.433, thr 0.683: small anchor 1.
    # GT 1: small (1/21, 10/12, 1/21), big (11/41, 1/51) -> thr 0.243 + 0.345 = 0.588: small 1.
    # Small anchor 1 is claimed by GT 0 (IoU 1), GT 1 (0.833) and GT 2 (IoU 1): highest IoU,
    # then the lowest index of the tie -> GT 0.
    out = atss_match([small, big], gts, topk=3)
    assert out.tolist() == [-1, 0, -1, -1, -1, -1]
    # GT 1 alone with GT 2: the higher IoU (GT 2, now index 1) wins over the lower index.
    assert atss_match([small, big], gts[1:], topk=3).tolist() == [-1, 1, -1, -1, -1, -1]
    # Order (GT 1, GT 0, GT 2): tie between indices 1 and 2 at IoU 1 -> 1.
    assert atss_match([small, big], gts[[1, 0, 2]], topk=3).tolist() == [-1, 1, -1, -1, -1, -1]
    # Against the reference, too.
    assert torch.equal(out, atss_reference([small, big], gts, topk=3))


def test_no_gt_and_single_candidate():
    levels = [grid_anchors(4, 8, [16.0]), grid_anchors(2, 16, [32.0])]
    empty = atss_match(levels, torch.zeros((0, 4)))
    assert empty.dtype == torch.long and empty.tolist() == [-1] * 20
    # One anchor in total: a single candidate -> NaN threshold -> no positive even for a perfect
    # match (mmdet: std of one value).
    one = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    assert atss_match(one, torch.tensor([[0.0, 0.0, 10.0, 10.0]])).tolist() == [-1]
    # A level with a single anchor among others: min(k, A_l) = 1 candidate from it.
    levels = [grid_anchors(4, 8, [16.0]), torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
    gts = torch.tensor([[2.0, 3.0, 30.0, 29.0], [0.0, 0.0, 60.0, 62.0]])
    out = atss_match(levels, gts)
    assert torch.equal(out, atss_reference(levels, gts))
    assert out[-1].item() == 1  # the big GT takes the single P-level anchor


def test_degenerate_gt_boxes():
    levels = [grid_anchors(6, 8, [16.0, 20.0]), grid_anchors(3, 16, [32.0, 40.0])]
    normal = torch.tensor([[4.0, 4.0, 30.0, 26.0]])
    degenerate = torch.tensor([[20.0, 20.0, 20.0, 20.0], [8.0, 8.0, 8.0, 30.0]])
    alone = atss_match(levels, normal)
    both = atss_match(levels, torch.cat([degenerate, normal]))
    assert not torch.isin(both, torch.tensor([0, 1])).any()  # zero-area GTs get nothing
    assert torch.equal(both, torch.where(alone >= 0, alone + 2, alone))
    assert (alone >= 0).any()


def _random_case(gen, num_gt):
    # 3 anchors per location (shared centres -> distance ties), integer GT corners sometimes
    # (ties between symmetric locations), duplicated GTs (IoU ties), a tiny and a huge GT.
    levels = [grid_anchors(16, 8, [32.0, 40.3, 50.8]), grid_anchors(8, 16, [64.0, 80.6, 101.6]),
              grid_anchors(4, 32, [128.0, 161.3, 203.2]),
              grid_anchors(2, 64, [256.0, 322.5, 406.4]),
              grid_anchors(1, 128, [512.0, 645.1, 812.7])]
    xy = torch.rand((num_gt, 2), generator=gen) * 128
    wh = torch.rand((num_gt, 2), generator=gen) * 90 + 2
    gts = torch.cat([xy, xy + wh], 1)
    gts[: num_gt // 3] = gts[: num_gt // 3].round()
    gts[-1] = gts[0]
    gts[-2] = torch.tensor([60.0, 60.0, 63.0, 61.0])
    gts[-3] = torch.tensor([0.0, 0.0, 128.0, 128.0])
    return levels, gts


def test_random_cases_match_per_gt_reference():
    gen = torch.Generator().manual_seed(0)
    total_pos = 0
    for num_gt in (4, 7, 12, 20):
        levels, gts = _random_case(gen, num_gt)
        out = atss_match(levels, gts)
        ref = atss_reference(levels, gts)
        assert torch.equal(out, ref), num_gt
        total_pos += int((out >= 0).sum())
        for k in (1, 2, 5):
            assert torch.equal(atss_match(levels, gts, topk=k), atss_reference(levels, gts, k))
    assert total_pos > 50


def test_batch_equals_single_images():
    gen = torch.Generator().manual_seed(1)
    cases = [_random_case(gen, n) for n in (5, 9, 3)]
    levels = cases[0][0]
    gts = [c[1] for c in cases] + [torch.zeros((0, 4))]
    out = atss_match_batch(levels, gts)
    assert out.shape == (4, sum(len(a) for a in levels)) and out.dtype == torch.long
    for i, g in enumerate(gts):
        assert torch.equal(out[i], atss_match(levels, g))
    assert (out[3] == -1).all()
    assert (atss_match_batch(levels, [torch.zeros((0, 4))] * 2) == -1).all()
    # Detectron2 Boxes are accepted as well as tensors.
    from detectron2.structures import Boxes

    assert torch.equal(atss_match([Boxes(a) for a in levels], Boxes(gts[0])), out[0])
