"""compute_olrp: hand-computed cases (a worked example and the matching / accumulation
branches), and agreement with a plain per-detection reference and with pycocotools' own matching
on random data."""
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from rsloss_d2.evaluation.olrp import compute_olrp, lrp_curves
from rsloss_d2.evaluation.synthetic import make_synthetic_coco

from reference_olrp import lrp_from_cocoeval, reference_olrp, summarize

COMPONENTS = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")


def make_gt(anns, num_images=1, cats=(1,), size=400):
    images = [{"id": i + 1, "width": size, "height": size} for i in range(num_images)]
    out = []
    for j, a in enumerate(anns):
        a = dict(a)
        a.setdefault("id", j + 1)
        a.setdefault("image_id", 1)
        a.setdefault("category_id", 1)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        out.append(a)
    return {"images": images, "annotations": out,
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def det(box, score, img=1, cat=1):
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


def nan_equal(a, b, rel=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=1e-9)


def assert_close(a, b):
    assert nan_equal(a, b), (a, b)


def assert_matches_reference(res, ref):
    """Compare a compute_olrp result with reference-format values (fractions, -1, NaN)."""
    for a, sfx in enumerate(("", "_s", "_m", "_l")):
        for i, name in enumerate(COMPONENTS):
            assert_close(res[name + sfx], summarize(ref, a, i))
    with_gt = {c for c, v in ref.items() if v[0][0] != -1}
    assert set(res["per_class"]) == with_gt
    for c in with_gt:
        pc = res["per_class"][c]
        want = ref[c][0]
        for i, name in enumerate(COMPONENTS):
            assert_close(pc[name], want[i] * 100)
        assert_close(pc["threshold"], want[4])


# ------------------------------------------------------------------- worked example
WORKED_GT = make_gt([{"bbox": [0, 0, 10, 10]}, {"bbox": [100, 100, 10, 10]}])
WORKED_DETS = [det([0, 0, 10, 8], 0.9),      # TP, IoU 0.8
               det([50, 50, 10, 10], 0.8),   # FP
               det([100, 100, 10, 6], 0.7)]  # TP, IoU 0.6


def test_worked_example_lrp_at_each_threshold():
    curve = lrp_curves(WORKED_GT, WORKED_DETS)[1]
    assert curve["score"].tolist() == [0.9, 0.8, 0.7]
    assert curve["LRP"] == pytest.approx([0.7, 0.8, 2.2 / 3])
    assert curve["TP"].tolist() == [1, 1, 2]
    assert curve["FP"].tolist() == [0, 1, 1]
    assert curve["FN"].tolist() == [1, 1, 0]
    assert curve["loc"] == pytest.approx([0.2, 0.2, 0.6])


def test_worked_example_optimum():
    res = compute_olrp(WORKED_GT, WORKED_DETS)
    pc = res["per_class"][1]
    assert pc["oLRP"] == pytest.approx(70.0)
    assert pc["oLRP_loc"] == pytest.approx(20.0)
    assert pc["oLRP_FP"] == 0.0
    assert pc["oLRP_FN"] == pytest.approx(50.0)
    assert pc["threshold"] == 0.9
    for name in COMPONENTS:
        assert res[name] == pytest.approx(pc[name])
        assert res[name + "_s"] == pytest.approx(pc[name])  # all GTs and detections are small
        assert math.isnan(res[name + "_m"]) and math.isnan(res[name + "_l"])  # no GT there


# ------------------------------------------------------------------ crowd
def test_crowd_detections_are_ignored_and_crowd_is_reusable():
    gt = make_gt([{"bbox": [0, 0, 20, 20]},
                  {"bbox": [100, 100, 80, 80], "iscrowd": 1}])
    dets = [det([110, 110, 20, 20], 0.95),  # inside the crowd region: ignored
            det([120, 120, 10, 10], 0.93),  # again (a crowd GT absorbs several): ignored
            det([0, 0, 20, 15], 0.9),       # TP, IoU 0.75
            det([300, 300, 10, 10], 0.6)]   # FP
    curve = lrp_curves(gt, dets)[1]
    assert curve["LRP"] == pytest.approx([1.0, 1.0, 0.5, 0.75])
    assert curve["FP"].tolist() == [0, 0, 0, 1]
    pc = compute_olrp(gt, dets)["per_class"][1]
    assert pc["oLRP"] == pytest.approx(50.0)
    assert pc["oLRP_FN"] == 0.0  # the crowd GT is not counted in N_GT
    assert pc["threshold"] == 0.9


def test_regular_gt_preferred_over_crowd():
    gt = make_gt([{"bbox": [100, 100, 80, 80], "iscrowd": 1},
                  {"bbox": [100, 100, 20, 20]}])
    # IoU 0.6 with the regular GT, 1.0 (crowd rule) with the crowd GT: the regular one wins
    dets = [det([100, 100, 20, 12], 0.9)]
    pc = compute_olrp(gt, dets)["per_class"][1]
    assert pc["oLRP"] == pytest.approx(80.0)  # (0.4 / 0.5) / 1
    assert pc["oLRP_loc"] == pytest.approx(40.0)


def test_equal_iou_goes_to_the_last_gt():
    gt = make_gt([{"bbox": [0, 0, 10, 10]}, {"bbox": [5, 0, 10, 10]}])
    dets = [det([2.5, 0, 10, 10], 0.9),  # IoU 0.6 with both GTs: COCO takes the last (GT 2)
            det([5, 0, 10, 10], 0.8)]    # IoU 1 with GT 2, which is taken -> FP
    pc = compute_olrp(gt, dets)["per_class"][1]
    assert pc["oLRP"] == pytest.approx(90.0)
    assert pc["oLRP_loc"] == pytest.approx(40.0)
    assert pc["oLRP_FN"] == pytest.approx(50.0)


# ------------------------------------------------------------------ area ranges
def test_area_ranges():
    gt = make_gt([{"bbox": [0, 0, 10, 10]},          # small (100)
                  {"bbox": [100, 100, 200, 200]},    # large (40000)
                  {"bbox": [0, 200, 50, 50]}])       # medium (2500), never detected
    dets = [det([0, 0, 10, 9], 0.9),            # IoU 0.9 with the small GT
            det([100, 100, 200, 160], 0.8),     # IoU 0.8 with the large GT
            det([350, 350, 5, 5], 0.7),         # FP, small
            det([300, 0, 100, 100], 0.6)]       # FP, large (10000)
    res = compute_olrp(gt, dets)
    assert res["oLRP"] == pytest.approx(1.6 / 3 * 100)
    assert res["oLRP_loc"] == pytest.approx(15.0)
    assert res["oLRP_FN"] == pytest.approx(100 / 3)
    assert res["per_class"][1]["threshold"] == 0.8
    # small: the large detection matches an ignored GT, the large FP is outside the range
    assert res["oLRP_s"] == pytest.approx(20.0)
    assert res["oLRP_FP_s"] == 0.0
    # medium: every detection is ignored (matched to out-of-range GTs or out of range itself)
    assert res["oLRP_m"] == 100.0 and res["oLRP_FN_m"] == 100.0
    assert math.isnan(res["oLRP_loc_m"]) and math.isnan(res["oLRP_FP_m"])
    # large: the small TP / FP are ignored, the large FP counts
    assert res["oLRP_l"] == pytest.approx(40.0)
    assert res["oLRP_loc_l"] == pytest.approx(20.0)
    assert lrp_curves(gt, dets)[1]["LRP"] == pytest.approx([2.2 / 3, 1.6 / 3, 2.6 / 4, 3.6 / 5])


# ------------------------------------------------------------------ missing classes, ties
def test_category_without_detections_and_without_gt():
    gt = make_gt(WORKED_GT["annotations"] + [{"id": 10, "bbox": [0, 0, 50, 50],
                                              "category_id": 2}], cats=(1, 2, 3))
    dets = WORKED_DETS + [det([5, 5, 30, 30], 0.99, cat=3)]  # class 3 has no GT
    res = compute_olrp(gt, dets)
    assert set(res["per_class"]) == {1, 2}
    pc2 = res["per_class"][2]
    assert pc2["oLRP"] == 100.0 and pc2["oLRP_FN"] == 100.0
    assert math.isnan(pc2["oLRP_loc"]) and math.isnan(pc2["oLRP_FP"])
    assert math.isnan(pc2["threshold"])
    assert res["oLRP"] == pytest.approx(85.0)      # (70 + 100) / 2
    assert res["oLRP_loc"] == pytest.approx(20.0)  # class 2 (NaN) left out
    assert res["oLRP_FP"] == 0.0
    assert res["oLRP_FN"] == pytest.approx(75.0)


def test_all_lrp_equal_one_takes_first_threshold():
    gt = make_gt([{"bbox": [0, 0, 10, 10]}])
    dets = [det([200, 200, 10, 10], 0.9), det([0, 0, 10, 5], 0.8)]  # FP, then TP with IoU 0.5
    pc = compute_olrp(gt, dets)["per_class"][1]
    assert pc["oLRP"] == 100.0 and pc["threshold"] == 0.9
    assert math.isnan(pc["oLRP_loc"])  # TP = 0 at the first prefix: 0/0
    assert pc["oLRP_FP"] == 100.0 and pc["oLRP_FN"] == 100.0


def test_score_ties_keep_the_input_order_within_an_image():
    gt = make_gt([{"bbox": [0, 0, 10, 10]}])
    a, b = det([0, 0, 10, 9], 0.5), det([0, 0, 10, 7], 0.5)  # IoU 0.9 / 0.7, same score
    assert compute_olrp(gt, [a, b])["per_class"][1]["oLRP"] == pytest.approx(20.0)
    assert compute_olrp(gt, [b, a])["per_class"][1]["oLRP"] == pytest.approx(60.0)


def test_score_ties_across_images_follow_image_id_order():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "image_id": 1},
                  {"bbox": [0, 0, 10, 10], "image_id": 2}], num_images=2)
    dets = [det([0, 0, 10, 6], 0.5, img=2),       # TP (IoU 0.6) in image 2, listed first
            det([100, 100, 10, 10], 0.5, img=1)]  # FP in image 1: comes first (image order)
    curve = lrp_curves(gt, dets)[1]
    assert curve["LRP"] == pytest.approx([1.0, 2.8 / 3])
    assert compute_olrp(gt, dets)["oLRP"] == pytest.approx(280 / 3)
    assert_matches_reference(compute_olrp(gt, dets), lrp_from_cocoeval(gt, dets))


# ------------------------------------------------------------------ masks
def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask):
    flat = mask.astype(np.uint8).flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return {"size": list(mask.shape), "counts": runs}


def _mask(rows, cols, size=40):
    m = np.zeros((size, size), dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_masks_hand_computed():
    crowd = _mask((20, 40), (20, 40))
    gt = {"images": [{"id": 1, "width": 40, "height": 40}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
               "bbox": [0, 0, 10, 10], "segmentation": _rle(_mask((0, 10), (0, 10)))},
              {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 400.0,
               "bbox": [20, 20, 20, 20], "segmentation": _uncompressed_rle(crowd)}]}
    dets = [{"image_id": 1, "category_id": 1, "score": 0.95,
             "segmentation": _rle(_mask((25, 30), (25, 30)))},  # inside the crowd: ignored
            {"image_id": 1, "category_id": 1, "score": 0.9,
             "segmentation": _rle(_mask((0, 10), (0, 8)))},     # TP, IoU 0.8
            {"image_id": 1, "category_id": 1, "score": 0.5,
             "segmentation": _rle(_mask((0, 5), (30, 35)))}]    # FP
    assert lrp_curves(gt, dets, iou_type="segm")[1]["LRP"] == pytest.approx([1.0, 0.4, 0.7])
    pc = compute_olrp(gt, dets, iou_type="segm")["per_class"][1]
    assert pc["oLRP"] == pytest.approx(40.0) and pc["oLRP_loc"] == pytest.approx(20.0)
    assert pc["oLRP_FP"] == 0.0 and pc["oLRP_FN"] == 0.0 and pc["threshold"] == 0.9
    assert_matches_reference(compute_olrp(gt, dets, iou_type="segm"),
                             lrp_from_cocoeval(gt, dets, "segm"))


def box_rle(box, height, width):
    """Compressed RLE (``counts`` a str, as in a results file) of an xywh box's mask."""
    x, y, w, h = box
    rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _polygon_dataset(seed):
    """Random boxes as polygon GTs (some crowd, as uncompressed RLE) and RLE detections."""
    gt, dets = make_synthetic_coco(num_images=8, num_classes=3, dets_per_image=8, seed=seed,
                                   crowd_frac=0.15, image_size=(120, 100), score_decimals=2)
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        if a["iscrowd"]:
            m = mask_utils.decode(mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]],
                                                         100, 120))[..., 0]
            a["segmentation"] = _uncompressed_rle(m.astype(bool))
        else:
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h * 0.7, x + w * 0.5, y + h,
                                  x, y + h]]
        a["area"] = float(mask_utils.area(mask_utils.merge(
            mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 120))))
    out = [{k: d[k] for k in ("image_id", "category_id", "score")}
           | {"segmentation": box_rle(d["bbox"], 100, 120)} for d in dets]
    return gt, out


def test_masks_random_against_pycocotools_and_reference():
    gt, dets = _polygon_dataset(3)
    res = compute_olrp(gt, dets, iou_type="segm")
    assert_matches_reference(res, lrp_from_cocoeval(gt, dets, "segm"))
    assert_matches_reference(res, reference_olrp(gt, dets, "segm"))


# ------------------------------------------------------------------ random data
@pytest.mark.parametrize("seed,max_dets", [(0, 100), (1, 100), (2, 3)])
def test_random_against_reference(seed, max_dets):
    gt, dets = make_synthetic_coco(num_images=25, num_classes=5, dets_per_image=12, seed=seed,
                                   crowd_frac=0.15, score_decimals=2)
    res = compute_olrp(gt, dets, max_dets=max_dets)
    assert_matches_reference(res, reference_olrp(gt, dets, max_dets=max_dets))


@pytest.mark.parametrize("seed,max_dets", [(4, 100), (5, 2)])
def test_random_against_pycocotools_matching(seed, max_dets):
    gt, dets = make_synthetic_coco(num_images=60, num_classes=6, dets_per_image=25, seed=seed,
                                   crowd_frac=0.1, score_decimals=2)
    res = compute_olrp(gt, dets, max_dets=max_dets)
    assert_matches_reference(res, lrp_from_cocoeval(gt, dets, max_dets=max_dets))


def test_gt_id_zero_and_image_subset_like_pycocotools():
    gt, dets = make_synthetic_coco(num_images=20, num_classes=3, dets_per_image=10, seed=7)
    for a in gt["annotations"]:
        a["id"] -= 1  # ids from 0: pycocotools treats a match to id 0 as no match
    assert_matches_reference(compute_olrp(gt, dets), lrp_from_cocoeval(gt, dets))
    sub = [3, 5, 8]
    gt_sub = dict(gt, images=[im for im in gt["images"] if im["id"] in sub],
                  annotations=[a for a in gt["annotations"] if a["image_id"] in sub])
    want = compute_olrp(gt_sub, [d for d in dets if d["image_id"] in sub])
    got = compute_olrp(gt, dets, img_ids=sub)
    for k in want:
        if k != "per_class":
            assert_close(got[k], want[k])
    assert got["per_class"].keys() == want["per_class"].keys()


# ------------------------------------------------------------------ inputs
def test_empty_detections_documented_result():
    res = compute_olrp(WORKED_GT, [])
    assert res["oLRP"] == 100.0 and res["oLRP_FN"] == 100.0
    assert math.isnan(res["oLRP_loc"]) and math.isnan(res["oLRP_FP"])
    assert res["per_class"][1]["oLRP"] == 100.0
    assert math.isnan(res["per_class"][1]["threshold"])


def test_gt_from_path_and_input_errors(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(WORKED_GT))
    assert compute_olrp(str(path), WORKED_DETS)["oLRP"] == pytest.approx(70.0)
    with pytest.raises(FileNotFoundError, match="not found"):
        compute_olrp(str(tmp_path / "missing.json"), WORKED_DETS)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        compute_olrp(str(bad), WORKED_DETS)
    with pytest.raises(ValueError, match="'images'"):
        compute_olrp({"annotations": [], "categories": []}, WORKED_DETS)
    with pytest.raises(ValueError, match="image ids that are not in the ground truth"):
        compute_olrp(WORKED_GT, WORKED_DETS + [det([0, 0, 5, 5], 0.3, img=99)])
    with pytest.raises(ValueError, match="category ids that are not in the ground truth"):
        compute_olrp(WORKED_GT, WORKED_DETS + [det([0, 0, 5, 5], 0.3, cat=7)])
    with pytest.raises(ValueError, match="has no 'score'"):
        compute_olrp(WORKED_GT, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="iou_type"):
        compute_olrp(WORKED_GT, WORKED_DETS, iou_type="keypoints")
