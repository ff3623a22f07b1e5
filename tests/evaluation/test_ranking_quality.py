"""ranking_quality: hand-made cases (sorted -> 1, reversed -> -1, ties), pooled vs per class,
agreement with scipy.stats.spearmanr on the same pairs, and the true positives being exactly
those of pycocotools' COCOeval / lvis-api's LVISEval (IoU 0.5, area all, 100 / 300 dets)."""
import contextlib
import copy
import io
import logging
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from rsloss_d2.evaluation import ranking_quality, ranking_quality_lvis, true_positives
from rsloss_d2.evaluation.ranking import average_ranks, spearman_by_group
from rsloss_d2.evaluation.synthetic import make_synthetic_coco

from test_olrp_lvis import make_lvis


def one_object_per_image(ious, scores, cats=None):
    """Image i holds one 100x100 object; its detection [0, 0, 100, 100 * iou] has IoU `iou`."""
    cats = cats if cats is not None else [1] * len(ious)
    gt = {"images": [{"id": i + 1, "width": 200, "height": 200} for i in range(len(ious))],
          "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(cats))],
          "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": c,
                           "bbox": [0, 0, 100, 100], "area": 10000.0, "iscrowd": 0}
                          for i, c in enumerate(cats)]}
    dets = [{"image_id": i + 1, "category_id": c, "bbox": [0, 0, 100, 100 * u], "score": s}
            for i, (u, s, c) in enumerate(zip(ious, scores, cats))]
    return gt, dets


IOUS = [0.55, 0.6, 0.64, 0.7, 0.72, 0.8, 0.83, 0.9, 0.95, 0.97, 1.0]


def test_sorted_scores_give_one_and_reversed_minus_one():
    scores = np.linspace(0.1, 0.9, len(IOUS)).tolist()
    res = ranking_quality(*one_object_per_image(IOUS, scores))
    assert res["spearman"] == pytest.approx(1.0)
    assert res["spearman_class_mean"] == pytest.approx(1.0)
    assert res["num_tp"] == len(IOUS)
    assert res["top10_iou"] == pytest.approx(np.mean(IOUS[1:]))  # the 10 best-scored
    assert res["mean_iou"] == pytest.approx(np.mean(IOUS))
    res = ranking_quality(*one_object_per_image(IOUS, scores[::-1]))
    assert res["spearman"] == pytest.approx(-1.0)
    assert res["spearman_class_mean"] == pytest.approx(-1.0)
    assert res["top10_iou"] == pytest.approx(np.mean(IOUS[:10]))


def test_ties_take_average_ranks():
    scores = [0.5, 0.5, 0.6, 0.6, 0.6, 0.7, 0.8, 0.8, 0.9, 0.95, 0.99]
    ious = list(IOUS)
    ious[3] = ious[4] = 0.72  # an IoU tie too
    res = ranking_quality(*one_object_per_image(ious, scores))
    want = spearmanr(scores, [round(u, 6) for u in ious]).statistic
    assert res["spearman"] == pytest.approx(want, abs=1e-12)
    assert 0 < res["spearman"] < 1
    # by hand: average ranks of ties
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0]), np.zeros(4, np.int64)).tolist() == [
        3.5, 1.0, 3.5, 2.0]


def test_readme_worked_example():
    """rsloss_d2/evaluation/README.md: A is a false positive, the other five rank to 0.8."""
    res = ranking_quality(*one_object_per_image([0.3, 0.85, 0.92, 0.60, 0.75, 0.55],
                                                [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]))
    assert res["num_tp"] == 5
    assert res["spearman"] == pytest.approx(0.8)
    assert math.isnan(res["spearman_class_mean"]) and math.isnan(res["top10_iou"])


def test_undefined_cases():
    res = ranking_quality(*one_object_per_image([0.8], [0.5]))
    assert math.isnan(res["spearman"]) and res["num_tp"] == 1
    assert math.isnan(res["spearman_class_mean"])  # no class with >= 10 true positives
    assert math.isnan(res["top10_iou"])
    res = ranking_quality(*one_object_per_image(IOUS, [0.5] * len(IOUS)))  # constant scores
    assert math.isnan(res["spearman"])
    gt, _ = one_object_per_image(IOUS, IOUS)
    res = ranking_quality(gt, [])
    assert res["num_tp"] == 0 and math.isnan(res["spearman"])


def test_pooled_and_per_class_differ():
    """Two classes, each sorted perfectly within itself, but the class with the better boxes has
    the lower scores: per-class 1, pooled negative."""
    n = len(IOUS)
    ious = [u * 0.5 + 0.5 for u in IOUS] + [u * 0.3 + 0.5 for u in IOUS]  # class 1 better
    scores = [0.1 + 0.01 * i for i in range(n)] + [0.6 + 0.01 * i for i in range(n)]
    cats = [1] * n + [2] * n
    res = ranking_quality(*one_object_per_image(ious, scores, cats))
    assert res["spearman_class_mean"] == pytest.approx(1.0)
    assert res["per_class"][1]["spearman"] == pytest.approx(1.0)
    assert res["per_class"][2]["num_tp"] == n
    assert res["spearman"] < 0
    assert res["spearman"] == pytest.approx(spearmanr(scores, ious).statistic, abs=1e-12)


def test_spearman_by_group_against_scipy():
    rng = np.random.default_rng(0)
    x = np.round(rng.random(300), 1)  # many ties
    y = np.round(x + rng.normal(0, 0.3, 300), 2)
    g = rng.integers(0, 4, 300)
    rho, n = spearman_by_group(x, y, g, 5)
    for k in range(4):
        assert rho[k] == pytest.approx(spearmanr(x[g == k], y[g == k]).statistic, abs=1e-12)
    assert n[4] == 0 and math.isnan(rho[4])


def _cocoeval_true_positives(gt, dets, iou_type="bbox"):
    """(image, class, score, IoU) of the true positives of COCOeval at IoU 0.5, area all,
    maxDets 100: dtMatches != 0 and not dtIgnore, IoU from COCOeval's own `ious`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(copy.deepcopy(gt), info={}, licenses=[])
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
    out = []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0]:
            continue
        gts = [g["id"] for g in ev._gts[e["image_id"], e["category_id"]]]
        ious = ev.ious[e["image_id"], e["category_id"]]
        for j, (m, ig) in enumerate(zip(e["dtMatches"][0], e["dtIgnore"][0])):
            if m and not ig:
                out.append((e["image_id"], e["category_id"], e["dtScores"][j],
                            float(ious[j, gts.index(m)])))
    return sorted(out)


def _ours(gt, dets, iou_type="bbox", lvis=False):
    tp = true_positives(gt, dets, iou_type, lvis=lvis)
    return sorted(zip(tp["image_id"].tolist(), tp["category_id"].tolist(), tp["score"].tolist(),
                      tp["iou"].tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_true_positives_are_cocoevals(seed):
    gt, dets = make_synthetic_coco(num_images=40, num_classes=5, dets_per_image=40, seed=seed,
                                   crowd_frac=0.15, score_decimals=2)
    gt["annotations"][3]["id"] = 0  # pycocotools never counts a match to GT id 0
    want = _cocoeval_true_positives(gt, dets)
    assert _ours(gt, dets) == want  # same detections, bit-identical IoUs
    res = ranking_quality(gt, dets)
    assert res["num_tp"] == len(want)
    scores = [w[2] for w in want]
    ious = [w[3] for w in want]
    assert res["spearman"] == pytest.approx(spearmanr(scores, ious).statistic, abs=1e-12)
    by_class = {}
    for _, c, s, u in want:
        by_class.setdefault(c, []).append((s, u))
    rhos = [spearmanr(*zip(*v)).statistic for v in by_class.values() if len(v) >= 10]
    assert res["spearman_class_mean"] == pytest.approx(np.nanmean(rhos), abs=1e-12)


def test_true_positives_of_masks_are_cocoevals():
    from test_ap import _polygon_masks

    gt, dets = make_synthetic_coco(num_images=10, num_classes=3, dets_per_image=12, seed=3,
                                   crowd_frac=0.1, score_decimals=2, image_size=(160, 120))
    gt, dets = _polygon_masks(gt, dets, 3)
    assert _ours(gt, dets, "segm") == _cocoeval_true_positives(gt, dets, "segm")


def test_true_positives_are_lvis_evals():
    from lvis import LVIS, LVISEval, LVISResults

    gt, dets = make_lvis(2, num_images=30, num_classes=6, dets_per_image=20)
    logging.getLogger("lvis").setLevel(logging.ERROR)
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = copy.deepcopy(gt)
    lvis_gt._create_index()
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(dets)), "bbox")
    ev.evaluate()
    want = []
    for e in ev.eval_imgs:
        if e is None or e["area_rng"] != ev.params.area_rng[0]:
            continue
        gts = [g["id"] for g in ev._gts[e["image_id"], e["category_id"]]]
        ious = ev.ious[e["image_id"], e["category_id"]]
        for j, (m, ig) in enumerate(zip(e["dt_matches"][0], e["dt_ignore"][0])):
            if m and not ig:
                want.append((e["image_id"], e["category_id"], e["dt_scores"][j],
                             float(ious[j, gts.index(m)])))
    assert _ours(gt, dets, lvis=True) == sorted(want)
    assert ranking_quality_lvis(gt, dets)["num_tp"] == len(want)
