"""The Detectron2 evaluators with oLRP (COCO and LVIS), `build_evaluator`, and the per-class
threshold helpers, on tiny json datasets fed Detectron2 `Instances` through process()/evaluate()."""
import copy
import itertools
import json
import logging
import math
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_lvis_instances
from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances

from rsloss_d2.config import add_rsloss_config
from rsloss_d2.evaluation import (
    COCOAPEvaluator, COCOOLRPEvaluator, LVISOLRPEvaluator, build_evaluator, compute_olrp,
    filter_by_class_thresholds, load_class_thresholds)

from test_olrp_lvis import HAND_DETS, HAND_GT

SIZE = 64


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _coco_json(tmp_path, optional_keys=True):
    """COCO ids 3 and 7 (non-contiguous); the worked example for class 3, class 7 never detected.
    `optional_keys=False` leaves out "info" and "licenses", as many exporters do."""
    anns = [(1, 1, 3, [0, 0, 10, 10]), (2, 1, 3, [40, 40, 10, 10]), (3, 2, 7, [5, 5, 30, 30])]
    gt = {"info": {}, "licenses": [],
          "images": [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.jpg"}
                     for i in (1, 2)],
          "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
          "annotations": [{"id": i, "image_id": im, "category_id": c, "bbox": b,
                           "area": float(b[2] * b[3]), "iscrowd": 0, "segmentation": _poly(*b)}
                          for i, im, c, b in anns]}
    if not optional_keys:
        del gt["info"], gt["licenses"]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(gt))
    name = f"olrp_test_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    DatasetCatalog.get(name)  # sets thing_classes / thing_dataset_id_to_contiguous_id
    return name, path


def _instances(boxes_xywh, scores, classes, masks=True):
    inst = Instances((SIZE, SIZE))
    b = torch.tensor(boxes_xywh, dtype=torch.float32).reshape(-1, 4)
    inst.pred_boxes = Boxes(torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        m = torch.zeros((len(scores), SIZE, SIZE), dtype=torch.bool)
        for i, (x, y, w, h) in enumerate(boxes_xywh):
            m[i, int(y):int(y + h), int(x):int(x + w)] = True
        inst.pred_masks = m
    return inst


def _coco_outputs(masks=True):
    # contiguous class 0 = COCO id 3: TP (IoU 0.8), FP, TP (IoU 0.6)
    return {1: _instances([[0, 0, 10, 8], [20, 20, 10, 10], [40, 40, 10, 6]], [0.9, 0.8, 0.7],
                          [0, 0, 0], masks),
            2: _instances([], [], [], masks)}


def _run(evaluator, outputs):
    evaluator.reset()
    for img_id, inst in outputs.items():
        evaluator.process([{"image_id": img_id}], [{"instances": inst}])
    return evaluator.evaluate()


def test_coco_evaluator_adds_olrp_beside_ap(tmp_path, caplog):
    name, path = _coco_json(tmp_path)
    ev = COCOOLRPEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.INFO):
        res = _run(ev, _coco_outputs())
    box = res["bbox"]
    assert "AP" in box and "AP-cat" in box
    assert box["oLRP"] == pytest.approx(85.0)      # (70 + 100) / 2
    assert box["oLRP_loc"] == pytest.approx(20.0)  # "dog" has no TP: left out
    assert box["oLRP_FP"] == 0.0
    assert box["oLRP_FN"] == pytest.approx(75.0)
    assert box["oLRP_s"] == pytest.approx(85.0)
    assert math.isnan(box["oLRP_m"]) and math.isnan(box["oLRP_l"])
    assert box["oLRP-cat"] == pytest.approx(70.0) and box["oLRP-dog"] == 100.0
    assert "Optimal LRP for bbox" in caplog.text and "Optimal LRP for segm" in caplog.text

    # segm: the same numbers as compute_olrp on Detectron2's json (without boxes)
    dets = list(itertools.chain(*[instances_to_coco_json(i, k)
                                  for k, i in _coco_outputs().items()]))
    for d in dets:
        d["category_id"] = {0: 3, 1: 7}[d["category_id"]]
        d.pop("bbox")
    want = compute_olrp(str(path), dets, iou_type="segm")
    for k in ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "oLRP_s", "oLRP_m", "oLRP_l"):
        assert res["segm"][k] == pytest.approx(want[k], nan_ok=True)

    thr_file = tmp_path / "out" / "lrp_optimal_thresholds.json"
    saved = json.loads(thr_file.read_text())
    assert saved["tau"] == 0.5 and set(saved) >= {"bbox", "segm"}
    assert load_class_thresholds(thr_file) == {0: pytest.approx(0.9)}  # dog: no TP, left out
    assert load_class_thresholds(thr_file, task="segm", by="category_id").keys() == {3}
    assert load_class_thresholds(thr_file)[0] == float(torch.tensor(0.9))  # the raw score


def test_coco_evaluator_without_any_detection(tmp_path):
    name, _ = _coco_json(tmp_path)
    ev = COCOOLRPEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    res = _run(ev, {1: _instances([], [], [], False), 2: _instances([], [], [], False)})
    box = res["bbox"]
    assert math.isnan(box["AP"])  # Detectron2's own behaviour
    assert box["oLRP"] == 100.0 and box["oLRP_FN"] == 100.0
    assert math.isnan(box["oLRP_loc"]) and math.isnan(box["oLRP_FP"])


@pytest.mark.parametrize("olrp", [True, False])
def test_coco_json_without_info_and_licenses_evaluates(tmp_path, olrp):
    """pycocotools' loadRes needs dataset["info"]: a json without it must still evaluate (AP and
    oLRP, boxes and masks) with the evaluators build_evaluator picks."""
    name, _ = _coco_json(tmp_path, optional_keys=False)
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.TEST.OLRP.ENABLED = olrp
    ev = build_evaluator(cfg, name, str(tmp_path / "out"))
    ev._distributed = False
    res = _run(ev, _coco_outputs())
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(res[task]["AP"])  # a number, not NaN
        assert res[task]["AP"] > 0
        assert ("oLRP" in res[task]) == olrp
    if olrp:
        assert res["bbox"]["oLRP"] == pytest.approx(85.0)


def _lvis_json(tmp_path):
    gt = copy.deepcopy(HAND_GT)
    for im in gt["images"]:
        im.update(width=SIZE * 8, height=SIZE * 8, file_name=f"{im['id']}.jpg")
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(gt))
    name = f"olrp_test_lvis_{uuid.uuid4().hex[:8]}"
    register_lvis_instances(name, {}, str(path), str(tmp_path))
    return name


def _lvis_outputs():
    """Instances of the hand detections of images 1 and 2, XYWH turned into XYXY; contiguous
    class = LVIS id − 1 (Detectron2's mapping for LVIS)."""
    outputs = {}
    for img in (1, 2):
        ds = [d for d in HAND_DETS if d["image_id"] == img]
        inst = Instances((SIZE * 8, SIZE * 8))
        b = torch.tensor([d["bbox"] for d in ds], dtype=torch.float32)
        inst.pred_boxes = Boxes(torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1))
        inst.scores = torch.tensor([d["score"] for d in ds])
        inst.pred_classes = torch.tensor([d["category_id"] - 1 for d in ds])
        outputs[img] = inst
    return outputs


def test_lvis_evaluator_federated_rules(tmp_path):
    name = _lvis_json(tmp_path)
    ev = LVISOLRPEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    outputs = _lvis_outputs()
    res = _run(ev, outputs)["bbox"]
    assert "APr" in res
    assert res["oLRP"] == pytest.approx(27.5)
    assert res["oLRP_r"] == pytest.approx(70.0)
    assert res["oLRP_c"] == pytest.approx(0.0)
    assert res["oLRP_f"] == pytest.approx(20.0)
    thr = load_class_thresholds(tmp_path / "out" / "lrp_optimal_thresholds.json")
    assert thr == {0: pytest.approx(0.9), 1: pytest.approx(0.7), 2: pytest.approx(0.5),
                   3: pytest.approx(0.4)}

    empty = {img: inst[:0] for img, inst in outputs.items()}  # the model predicts nothing
    res = _run(ev, empty)["bbox"]
    assert math.isnan(res["AP"])
    assert res["oLRP"] == 100.0 and res["oLRP_r"] == 100.0 and math.isnan(res["oLRP_loc"])


def test_build_evaluator(tmp_path):
    coco_name, _ = _coco_json(tmp_path)
    lvis_name = _lvis_json(tmp_path)
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    assert type(build_evaluator(cfg, coco_name)) is COCOOLRPEvaluator
    assert type(build_evaluator(cfg, lvis_name)) is LVISOLRPEvaluator
    ev = build_evaluator(cfg, coco_name, str(tmp_path / "x"))
    assert ev._output_dir == str(tmp_path / "x") and ev._tau == 0.5
    assert ev._olrp and ev._ranking_quality and ev._ap_impl == "vectorised"
    cfg.TEST.OLRP.ENABLED = False
    cfg.TEST.RANKING_QUALITY.ENABLED = False
    cfg.TEST.AP_IMPL = "official"
    ev = build_evaluator(cfg, lvis_name)
    assert type(ev) is LVISOLRPEvaluator
    assert not ev._olrp and not ev._ranking_quality and ev._ap_impl == "official"
    plain = get_cfg()  # without rsloss_d2's keys: Detectron2's evaluators
    plain.OUTPUT_DIR = str(tmp_path)
    assert type(build_evaluator(plain, coco_name)) is COCOAPEvaluator
    assert issubclass(COCOAPEvaluator, COCOEvaluator)
    assert type(build_evaluator(plain, lvis_name)) is LVISEvaluator
    other = f"olrp_test_other_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(other).set(evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="sem_seg"):
        build_evaluator(cfg, other)


def test_filter_by_class_thresholds():
    inst = _instances([[0, 0, 5, 5]] * 5, [0.2, 0.5, 0.55, 0.9, 0.3], [0, 0, 1, 1, 2], False)
    kept = filter_by_class_thresholds(inst, {0: 0.5, 1: 0.6}, default=0.25)
    assert kept.scores.tolist() == pytest.approx([0.5, 0.9, 0.3])  # >= is kept
    assert len(filter_by_class_thresholds(inst[:0], {0: 0.5}, 0.1)) == 0


def test_baseline_comparison_only_for_its_dataset():
    from rsloss_d2.evaluation.build import format_baseline_comparison

    cfg = get_cfg()
    add_rsloss_config(cfg)
    assert format_baseline_comparison(cfg, {"shapes_val": {"bbox": {"AP": 1.0}}}) is None
    cfg.TEST.BASELINE_NAME = "Mask R-CNN"
    cfg.TEST.BASELINE_RESULTS = "bbox/AP=51.7,segm/oLRP=53.1"
    cfg.TEST.BASELINE_DATASET = "shapes_val"
    text = format_baseline_comparison(
        cfg, {"shapes_val": {"bbox": {"AP": 48.25}, "segm": {"oLRP": 50.0}}})
    lines = text.splitlines()
    assert "shapes_val" in lines[0]
    assert lines[2].split() == ["bbox/AP", "48.2", "51.7"]
    assert lines[3].split() == ["segm/oLRP", "50.0", "53.1"]
    # trained / evaluated on other data: no comparison
    assert format_baseline_comparison(cfg, {"my_val": {"bbox": {"AP": 48.25}}}) is None


@pytest.mark.parametrize("evaluator", ["coco", "lvis"])
def test_evaluators_report_ranking_quality_and_equal_ap_either_way(tmp_path, caplog, evaluator):
    """Ranking quality beside AP / oLRP (equal to ranking_quality on the same results), and the
    vectorised AP equal to the official APIs' inside the evaluators."""
    from rsloss_d2.evaluation import ranking_quality, ranking_quality_lvis

    if evaluator == "coco":
        name, path = _coco_json(tmp_path)
        cls, outputs, want_fn = COCOOLRPEvaluator, _coco_outputs(), ranking_quality
        mapping = {0: 3, 1: 7}
    else:
        name = _lvis_json(tmp_path)
        path = tmp_path / "lvis.json"
        cls, want_fn = LVISOLRPEvaluator, ranking_quality_lvis
        mapping = {i: i + 1 for i in range(4)}
        outputs = _lvis_outputs()
    results = {}
    for impl in ("vectorised", "official"):
        ev = cls(name, distributed=False, output_dir=str(tmp_path / impl), ap_impl=impl)
        with caplog.at_level(logging.INFO):
            results[impl] = _run(ev, outputs)
    assert "Ranking quality for bbox" in caplog.text
    assert set(results["official"]) == set(results["vectorised"])  # masks too for COCO
    for task, res in results["official"].items():
        for k, v in res.items():
            assert results["vectorised"][task][k] == pytest.approx(v, abs=1e-12, nan_ok=True)
    results = {impl: res["bbox"] for impl, res in results.items()}
    dets = list(itertools.chain(*[instances_to_coco_json(i, k) for k, i in outputs.items()]))
    for d in dets:
        d["category_id"] = mapping[d["category_id"]]
    want = want_fn(str(path), dets)
    for k in ("spearman", "spearman_class_mean", "top10_iou", "mean_iou", "num_tp"):
        assert results["vectorised"][k] == pytest.approx(want[k], nan_ok=True), k
    assert want["num_tp"] > 0

    off = cls(name, distributed=False, output_dir=str(tmp_path / "off"), olrp=False,
              ranking_quality=False)
    res = _run(off, outputs)["bbox"]
    assert "AP" in res and "oLRP" not in res and "spearman" not in res
