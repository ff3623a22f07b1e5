"""compute_olrp_lvis: LVIS federated rules by hand-computed numbers, and agreement with the plain
reference and with the LVIS API's own matching (`LVISEval.evaluate()`) on random data."""
import math

import numpy as np
import pytest

from rsloss_d2.evaluation.olrp import compute_olrp_lvis
from rsloss_d2.evaluation.synthetic import make_synthetic_coco

from reference_olrp import lrp_from_lvis_eval, reference_olrp
from test_olrp import assert_close, assert_matches_reference, box_rle


def lvis_gt(anns, images, freqs):
    out = []
    for j, a in enumerate(anns):
        a = dict(a, id=j + 1)
        a["area"] = float(a["bbox"][2] * a["bbox"][3])
        out.append(a)
    return {"images": [dict(im, width=400, height=400) for im in images], "annotations": out,
            "categories": [{"id": c, "name": f"c{c}", "frequency": f} for c, f in freqs.items()]}


def det(box, score, img, cat):
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


HAND_GT = lvis_gt(
    [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},
     {"image_id": 1, "category_id": 2, "bbox": [100, 100, 20, 20]},
     {"image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30]},
     {"image_id": 2, "category_id": 4, "bbox": [100, 100, 40, 40]}],
    [{"id": 1, "neg_category_ids": [3], "not_exhaustive_category_ids": [2]},
     {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
    {1: "f", 2: "c", 3: "r", 4: "f"})
HAND_DETS = [
    det([0, 0, 20, 20], 0.99, 1, 4),      # class 4: neither positive nor negative in image 1
    det([300, 300, 10, 10], 0.95, 1, 2),  # unmatched, class 2 not exhaustive in image 1: ignored
    det([0, 0, 20, 16], 0.9, 1, 1),       # TP, IoU 0.8
    det([200, 200, 20, 20], 0.8, 1, 1),   # FP
    det([100, 100, 20, 20], 0.7, 1, 2),   # TP, IoU 1
    det([50, 50, 10, 10], 0.6, 1, 3),     # FP: class 3 is negative in image 1
    det([0, 0, 30, 24], 0.5, 2, 3),       # TP, IoU 0.8
    det([100, 100, 40, 40], 0.4, 2, 4),   # TP, IoU 1
]


def test_federated_rules_hand_computed():
    res = compute_olrp_lvis(HAND_GT, HAND_DETS)
    pc = res["per_class"]
    assert pc[1]["oLRP"] == pytest.approx(40.0) and pc[1]["threshold"] == 0.9
    assert pc[2]["oLRP"] == 0.0 and pc[2]["threshold"] == 0.7  # the ignored det costs nothing
    assert pc[3]["oLRP"] == pytest.approx(70.0)  # the negative-class detection is an FP
    assert pc[3]["oLRP_FP"] == pytest.approx(50.0) and pc[3]["threshold"] == 0.5
    assert pc[4]["oLRP"] == 0.0  # the dropped detection is not an FP
    assert res["oLRP"] == pytest.approx(27.5)
    assert res["oLRP_r"] == pytest.approx(70.0)
    assert res["oLRP_c"] == 0.0
    assert res["oLRP_f"] == pytest.approx(20.0)
    assert_matches_reference(res, lrp_from_lvis_eval(HAND_GT, HAND_DETS))


def test_max_dets_per_image_over_all_classes():
    # top 4 of image 1: the (dropped) class-4 detection still takes a slot, so the class-2 TP
    # (0.7) and the class-3 FP (0.6) fall out
    res = compute_olrp_lvis(HAND_GT, HAND_DETS, max_dets=4)
    pc = res["per_class"]
    assert pc[1]["oLRP"] == pytest.approx(40.0)
    assert pc[2]["oLRP"] == 100.0 and math.isnan(pc[2]["threshold"])
    assert pc[3]["oLRP"] == pytest.approx(40.0)
    assert pc[4]["oLRP"] == 0.0
    assert res["oLRP"] == pytest.approx(45.0)
    assert_matches_reference(res, lrp_from_lvis_eval(HAND_GT, HAND_DETS, max_dets=4))


def test_zero_area_detections_are_dropped_and_no_crowd():
    gt = lvis_gt([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 1}],
                 [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
                 {1: "r"})
    dets = [det([5, 5, 0, 10], 0.99, 1, 1),  # area 0: dropped (would be an FP)
            det([0, 0, 20, 16], 0.9, 1, 1)]  # TP although the GT says iscrowd: LVIS has no crowd
    res = compute_olrp_lvis(gt, dets)
    assert res["per_class"][1]["oLRP"] == pytest.approx(40.0)
    assert res["oLRP_r"] == pytest.approx(40.0)
    assert math.isnan(res["oLRP_c"]) and math.isnan(res["oLRP_f"])  # no class in the group
    assert_matches_reference(res, lrp_from_lvis_eval(gt, dets))


def test_lvis_format_errors():
    gt = lvis_gt([], [{"id": 1, "neg_category_ids": []}], {1: "r"})
    with pytest.raises(ValueError, match="not_exhaustive_category_ids"):
        compute_olrp_lvis(gt, [])
    gt = lvis_gt([], [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
                 {1: "x"})
    with pytest.raises(ValueError, match="frequency"):
        compute_olrp_lvis(gt, [])


def make_lvis(seed, num_images=30, num_classes=6, dets_per_image=15, masks=False):
    """Synthetic COCO data turned into LVIS format with random federated annotations."""
    rng = np.random.default_rng(seed + 100)
    gt, dets = make_synthetic_coco(num_images=num_images, num_classes=num_classes,
                                   dets_per_image=dets_per_image, seed=seed, crowd_frac=0.0,
                                   score_decimals=2)
    for a in gt["annotations"]:
        a.pop("iscrowd")
    cats = [c["id"] for c in gt["categories"]]
    for c in gt["categories"]:
        c["frequency"] = "rcf"[int(rng.integers(3))]
    pos = {}
    for a in gt["annotations"]:
        pos.setdefault(a["image_id"], set()).add(a["category_id"])
    for im in gt["images"]:
        p = pos.get(im["id"], set())
        others = [c for c in cats if c not in p]
        im["neg_category_ids"] = [c for c in others if rng.random() < 0.5]
        im["not_exhaustive_category_ids"] = [c for c in p if rng.random() < 0.3]
    if masks:
        W, H = gt["images"][0]["width"], gt["images"][0]["height"]
        for a in gt["annotations"]:
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h * 0.6, x, y + h]]
        for d in dets:
            d["segmentation"] = box_rle(d.pop("bbox"), H, W)
    return gt, dets


@pytest.mark.parametrize("seed,max_dets", [(0, 300), (1, 6)])
def test_random_against_lvis_api_and_reference(seed, max_dets):
    gt, dets = make_lvis(seed)
    res = compute_olrp_lvis(gt, dets, max_dets=max_dets)
    assert_matches_reference(res, lrp_from_lvis_eval(gt, dets, max_dets=max_dets))
    assert_matches_reference(res, reference_olrp(gt, dets, max_dets=max_dets, lvis=True))
    ref = lrp_from_lvis_eval(gt, dets, max_dets=max_dets)
    for f in "rcf":
        cats = [c["id"] for c in gt["categories"] if c["frequency"] == f]
        vals = [ref[c][0][0] for c in cats if ref[c][0][0] > -1]
        assert_close(res["oLRP_" + f], float(np.mean(vals) * 100) if vals else math.nan)


def test_random_masks_against_lvis_api():
    gt, dets = make_lvis(5, num_images=10, num_classes=3, dets_per_image=8, masks=True)
    res = compute_olrp_lvis(gt, dets, iou_type="segm")
    assert_matches_reference(res, lrp_from_lvis_eval(gt, dets, "segm"))
