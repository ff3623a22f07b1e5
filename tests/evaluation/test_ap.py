"""compute_coco_ap / compute_lvis_ap: equal (max |difference| 0) to pycocotools' COCOeval and
lvis-api's LVISEval on hand-made and randomised cases (crowd, score ties, area ranges, several
classes, masks, federated LVIS rules, a shapes_lt set), and hand-computed values."""
import contextlib
import copy
import io
import logging

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from rsloss_d2.evaluation import compute_coco_ap, compute_lvis_ap, evaluate_coco, evaluate_lvis
from rsloss_d2.evaluation.synthetic import make_synthetic_coco

from test_olrp import box_rle, det, make_gt
from test_olrp_lvis import HAND_DETS, HAND_GT, make_lvis

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_KEYS = COCO_KEYS + ("APr", "APc", "APf")


def cocoeval(gt, dets, iou_type="bbox", max_dets=100):
    """pycocotools' COCOeval (evaluate / accumulate / summarize) on copies of the inputs;
    Detectron2's `COCOevalMaxDets` (its summary at maxDets[2]) for another `max_dets`."""
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.dataset.setdefault("info", {})
        coco_gt.dataset.setdefault("licenses", [])
        coco_gt.createIndex()
        cls = COCOeval if max_dets == 100 else COCOevalMaxDets
        ev = cls(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def lvis_eval(gt, dets, iou_type="bbox", max_dets=300):
    """lvis-api's LVISResults + LVISEval.run() on copies of the inputs."""
    from lvis import LVIS, LVISEval, LVISResults

    logging.getLogger("lvis").setLevel(logging.ERROR)
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis")
    lvis_gt.dataset = copy.deepcopy(gt)
    lvis_gt._create_index()
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(dets), max_dets=max_dets), iou_type)
    ev.run()
    return ev


def assert_equal_to_cocoeval(gt, dets, iou_type="bbox", max_dets=100):
    ev = cocoeval(gt, dets, iou_type, max_dets)
    ours = evaluate_coco(gt, dets, iou_type, max_dets=max_dets, olrp=False, ranking=False)
    assert list(ours["ap"]) == list(COCO_KEYS)
    diff = np.abs(np.array([ours["ap"][k] for k in COCO_KEYS]) - ev.stats[:6]).max()
    assert diff == 0, (ours["ap"], ev.stats[:6])
    assert np.array_equal(ours["precision"], ev.eval["precision"][..., -1])
    return ours["ap"]


# ------------------------------------------------------------------------------ hand-made
def test_hand_computed_coco_ap():
    gt = make_gt([{"bbox": [0, 0, 100, 100]}, {"bbox": [200, 200, 20, 20]}])
    # a large FP above the large object's perfect detection; the small object is missed
    dets = [det([250, 250, 120, 120], 0.9), det([0, 0, 100, 100], 0.8)]
    ap = compute_coco_ap(gt, dets)
    # recall 1/2 at precision 1/2 (minus eps): 51 of the 101 recall points, at every threshold
    assert ap["AP"] == pytest.approx(51 / 101 * 0.5)
    assert ap["APl"] == pytest.approx(0.5)  # the small GT is ignored there: recall 1 at 1/2
    assert ap["APs"] == 0.0  # the small object is never found
    assert ap["APm"] == -1.0  # no medium object: undefined, as pycocotools
    assert_equal_to_cocoeval(gt, dets)


def test_no_detection_gives_zero_ap_and_minus_one_without_gt():
    gt = make_gt([{"bbox": [0, 0, 100, 100]}], cats=(1, 2))
    ap = compute_coco_ap(gt, [])
    assert ap["AP"] == 0.0 and ap["APl"] == 0.0 and ap["APs"] == -1.0


def test_crowd_ignore_and_gt_id_zero_like_pycocotools():
    gt = make_gt([{"id": 0, "bbox": [0, 0, 40, 40]},  # id 0: pycocotools never counts its match
                  {"bbox": [100, 100, 50, 50]},
                  {"bbox": [200, 0, 150, 150], "iscrowd": 1},
                  {"bbox": [0, 200, 60, 60], "ignore": 1}])  # COCOeval overrides it: iscrowd
    dets = [det([0, 0, 40, 40], 0.9), det([100, 100, 50, 48], 0.8), det([0, 200, 60, 50], 0.75),
            det([210, 10, 40, 40], 0.7), det([220, 20, 40, 40], 0.6),  # inside the crowd
            det([0, 300, 30, 30], 0.5)]
    ap = assert_equal_to_cocoeval(gt, dets)
    assert 0 < ap["AP"] < 1


# ---------------------------------------------------------------------------- randomised
@pytest.mark.parametrize("seed,decimals,max_dets", [(0, None, 100), (1, 2, 100), (2, 1, 20),
                                                     (3, 2, 100)])
def test_random_boxes_equal_pycocotools(seed, decimals, max_dets):
    gt, dets = make_synthetic_coco(num_images=40, num_classes=5, dets_per_image=30, seed=seed,
                                   crowd_frac=0.1, score_decimals=decimals)
    assert_equal_to_cocoeval(gt, dets, max_dets=max_dets)


def _polygon_masks(gt, dets, seed):
    rng = np.random.default_rng(seed)
    W, H = gt["images"][0]["width"], gt["images"][0]["height"]
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h * rng.uniform(0.4, 1), x, y + h]]
        a["area"] = float(mask_utils.area(mask_utils.merge(
            mask_utils.frPyObjects(a["segmentation"], H, W))))
    for d in dets:
        d["segmentation"] = box_rle(d.pop("bbox"), H, W)
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_random_masks_equal_pycocotools(seed):
    gt, dets = make_synthetic_coco(num_images=12, num_classes=3, dets_per_image=12, seed=seed,
                                   crowd_frac=0.1, score_decimals=2, image_size=(160, 120))
    gt, dets = _polygon_masks(gt, dets, seed)
    assert_equal_to_cocoeval(gt, dets, "segm")


def test_img_ids_subset_equals_cocoeval_params():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = make_synthetic_coco(num_images=20, num_classes=4, dets_per_image=20, seed=7)
    ids = [3, 5, 8, 13, 17]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(copy.deepcopy(gt), info={}, licenses=[])
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = evaluate_coco(gt, dets, img_ids=ids, olrp=False, ranking=False)["ap"]
    assert [ours[k] for k in COCO_KEYS] == list(ev.stats[:6])


# ------------------------------------------------------------------------------------ LVIS
def assert_equal_to_lvis_api(gt, dets, iou_type="bbox", max_dets=300):
    ev = lvis_eval(gt, dets, iou_type, max_dets)
    ours = compute_lvis_ap(gt, dets, iou_type, max_dets)
    assert list(ours) == list(LVIS_KEYS)
    assert all(ours[k] == ev.results[k] for k in LVIS_KEYS), (ours, dict(ev.results))
    full = evaluate_lvis(gt, dets, iou_type, max_dets, olrp=False, ranking=False)
    assert np.array_equal(full["precision"], ev.eval["precision"])
    return ours


def test_lvis_hand_case_federated_rules():
    ap = assert_equal_to_lvis_api(HAND_GT, HAND_DETS)
    # class 2: the unmatched detection of a not-exhaustive class is ignored -> AP 1
    full = evaluate_lvis(HAND_GT, HAND_DETS, olrp=False, ranking=False)
    assert full["precision"][:, :, 1, 0].min() == pytest.approx(1.0)
    assert ap["APc"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed,max_dets", [(0, 300), (1, 6), (4, 300)])
def test_random_lvis_boxes_equal_lvis_api(seed, max_dets):
    gt, dets = make_lvis(seed, num_images=25, num_classes=6, dets_per_image=15)
    assert_equal_to_lvis_api(gt, dets, max_dets=max_dets)


@pytest.mark.parametrize("seed", [5, 6])
def test_random_lvis_masks_equal_lvis_api(seed):
    gt, dets = make_lvis(seed, num_images=10, num_classes=3, dets_per_image=8, masks=True)
    assert_equal_to_lvis_api(gt, dets, "segm", max_dets=6)


def test_lvis_masks_with_boxes_use_the_box_area():
    """lvis-api's quirk: a mask result that carries "bbox" gets the box's area."""
    gt, dets = make_lvis(8, num_images=10, num_classes=3, dets_per_image=8, masks=True)
    for d in dets:
        x, y, w, h = mask_utils.toBbox(d["segmentation"]).tolist()
        d["bbox"] = [x, y, w * 3, h * 3]  # a much larger box: other area ranges
    with_box = assert_equal_to_lvis_api(gt, dets, "segm")
    without = compute_lvis_ap(gt, [{k: v for k, v in d.items() if k != "bbox"} for d in dets],
                              "segm")
    assert with_box["AP"] == without["AP"]  # matching is by mask either way
    assert with_box["APm"] != without["APm"]  # the area ranges follow the box


def test_lvis_ignore_flag_is_honoured():
    gt, dets = make_lvis(9, num_images=20, num_classes=4, dets_per_image=12)
    for a in gt["annotations"][::3]:
        a["ignore"] = 1  # LVISEval keeps a GT's own "ignore" (no crowd in LVIS)
    ours = assert_equal_to_lvis_api(gt, dets)
    plain = compute_lvis_ap(make_lvis(9, num_images=20, num_classes=4, dets_per_image=12)[0],
                            dets)
    assert ours != plain


def test_lvis_gt_id_zero_is_never_matched():
    gt = copy.deepcopy(HAND_GT)
    for a in gt["annotations"]:
        a["id"] -= 1  # ids 0..3: the first GT (class 1) can never be matched
    ours = assert_equal_to_lvis_api(gt, HAND_DETS)
    assert ours["AP"] < compute_lvis_ap(HAND_GT, HAND_DETS)["AP"]


def _shapes_lt_predictions(gt, seed):
    """Detections of a shapes_lt set as a detector would give them: noisy copies of the objects
    (some with another class), random false positives, masks from the objects' polygons."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    images = {im["id"]: im for im in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        im = images[a["image_id"]]
        for _ in range(int(rng.integers(1, 3))):
            x, y, w, h = a["bbox"]
            n = rng.normal(0, 0.1, 4)
            box = [x + n[0] * w, y + n[1] * h, w * np.exp(n[2]), h * np.exp(n[3])]
            rle = mask_utils.frPyObjects([[box[0], box[1], box[0] + box[2], box[1],
                                           box[0] + box[2], box[1] + box[3], box[0],
                                           box[1] + box[3]]], im["height"], im["width"])[0]
            rle["counts"] = rle["counts"].decode("ascii")
            cat = a["category_id"] if rng.random() > 0.15 else int(rng.choice(cats))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [float(v) for v in box], "segmentation": rle,
                         "score": float(np.round(rng.beta(4, 2) * np.exp(-np.abs(n).sum()), 3))})
    for im in gt["images"]:
        for _ in range(int(rng.integers(2, 10))):
            s = rng.uniform(4, im["width"] / 2)
            x, y = rng.uniform(0, im["width"] - s), rng.uniform(0, im["height"] - s)
            rle = mask_utils.frPyObjects([[x, y, x + s, y, x + s, y + s, x, y + s]],
                                         im["height"], im["width"])[0]
            rle["counts"] = rle["counts"].decode("ascii")
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cats)),
                         "bbox": [x, y, s, s], "segmentation": rle,
                         "score": float(np.round(rng.beta(1, 6), 3))})
    return dets


def test_shapes_lt_set_equals_lvis_api(tmp_path):
    import json

    from rsloss_d2.data.synthetic import generate_shapes_lt

    path = generate_shapes_lt(str(tmp_path), "val", 30, image_size=96, seed=3, progress=False)
    with open(path) as f:
        gt = json.load(f)
    dets = _shapes_lt_predictions(gt, 0)
    assert_equal_to_lvis_api(gt, dets, "bbox")
    masks = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]  # as Detectron2
    assert_equal_to_lvis_api(gt, masks, "segm", max_dets=20)
