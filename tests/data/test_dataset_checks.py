"""Everything in a researcher's own dataset that would crash training late or silently train on
wrong data is stopped by the checks before launch (`rsloss_d2.engine.check_before_launch`, run
in-process): malformed RLE masks, empty / degenerate masks with a mask model, image files that
are missing, cut short, not images, of another size (EXIF orientation applied) or 16-bit;
categories that differ between training and test sets; own training data with a built-in test
set; a training set without annotations; fewer classes than categories. Each test breaks one
thing in a tiny generated set and asserts that the message names the file / annotation / key."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from rsloss_d2.data import DatasetFileError
from rsloss_d2.data.config_checks import ConfigDataError
from rsloss_d2.data.file_checks import check_image_files
from rsloss_d2.data.user_datasets import DatasetFormatError, inspect_annotation_file
from rsloss_d2.engine import launch as engine

from conftest import QUICK_CONFIG, REPO
from foreign_coco import make_tiny_coco, write_json

RS_ATSS = os.path.join(REPO, "configs", "shapes", "rs_atss_R_18_FPN_quick.yaml")
RS_YOLACT = os.path.join(REPO, "configs", "shapes", "rs_yolact_R_18_quick.yaml")
BOX_ONLY = os.path.join(REPO, "configs", "shapes", "rs_faster_rcnn_R_18_FPN_quick.yaml")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own (empty) cache of dataset inspections."""
    monkeypatch.setenv("RSLOSS_D2_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_coco(str(tmp_path / "tiny"))


def _copy(data):
    return json.loads(json.dumps(data))


def _variant(tiny, tmp_path, edit, name="variant.json"):
    data = _copy(tiny["data"])
    edit(data)
    return write_json(str(tmp_path / name), data)


def _check(tmp_path, datasets, *opts, config=QUICK_CONFIG, eval_only=False, num_classes=2):
    """check_before_launch for `--dataset` triples and KEY VALUE opts; returns the args."""
    argv = []
    for triple in datasets:
        argv += ["--dataset", *triple]
    argv += ["--config-file", config] + (["--eval-only"] if eval_only else [])
    key = {QUICK_CONFIG: "MODEL.ROI_HEADS.NUM_CLASSES", BOX_ONLY: "MODEL.ROI_HEADS.NUM_CLASSES",
           RS_ATSS: "MODEL.RETINANET.NUM_CLASSES", RS_YOLACT: "MODEL.YOLACT.NUM_CLASSES"}[config]
    argv += ["OUTPUT_DIR", str(tmp_path / "out"), key, str(num_classes)] + list(opts)
    if eval_only:  # a weights file must exist (its content is not read before launch)
        weights = tmp_path / "model_final.pth"
        weights.write_bytes(b"")
        argv += ["MODEL.WEIGHTS", str(weights)]
    args = engine.argument_parser().parse_args(argv)
    engine.check_before_launch(args)
    return args


def _train_on(tiny, path=None, name="own_train"):
    return [(name, path or tiny["json"], tiny["images"])], ["DATASETS.TRAIN", f"('{name}',)",
                                                           "DATASETS.TEST", "()"]


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def test_the_tiny_set_passes_and_every_mask_decodes(tiny, tmp_path):
    datasets, opts = _train_on(tiny)
    args = _check(tmp_path, datasets, *opts)
    assert args.opts[-2:] == ["INPUT.MASK_FORMAT", "bitmask"]  # RLE masks
    dicts = DatasetCatalog.get("own_train")
    assert [len(d["annotations"]) for d in dicts] == [3, 3, 3, 0]


# ------------------------------------------------------------------ RLE masks
@pytest.mark.parametrize("counts,message", [
    # a list summing to less than H*W: pycocotools decodes uninitialised memory
    ([100, 20, 50], r"uncompressed RLE 'counts' sum to 170, not height \* width = 1200"),
    ([1000, 300], r"uncompressed RLE .counts. sum to 1300, not height \* width = 1200"),
    ([600, -10, 610], r"uncompressed RLE .counts. must be non-negative integers, got -10"),
    ("garbage!", r"compressed RLE 'counts' cannot be decoded"),
    ("PP`0", r"compressed RLE 'counts' decodes to runs summing to \d+, not height \* width"),
    (1200, r"RLE 'counts' must be a list of run lengths or a compressed string, got int"),
])
def test_malformed_rle_names_the_annotation(tiny, tmp_path, counts, message):
    path = _variant(tiny, tmp_path, lambda d: _ann(d, 1011)["segmentation"].__setitem__(
        "counts", counts))
    datasets, opts = _train_on(tiny, path)
    with pytest.raises(DatasetFormatError, match=r"annotation id 1011 \(annotations\[4\]\): "
                       + message) as e:
        _check(tmp_path, datasets, *opts)
    assert path in str(e.value) and "dataset 'own_train'" in str(e.value)


def test_crowd_rle_with_short_counts_is_refused_too(tiny, tmp_path):
    path = _variant(tiny, tmp_path, lambda d: _ann(d, 1002)["segmentation"].__setitem__(
        "counts", [5, 5]))
    with pytest.raises(DatasetFormatError, match=r"annotation id 1002 .* sum to 10, not"):
        inspect_annotation_file("own", path, tiny["images"])


# ---------------------------------------------------- empty and degenerate masks
def _refused_with_masks_kept_without(tiny, tmp_path, ann_id, segmentation, match, image_id):
    """Annotation ``ann_id`` given ``segmentation``: the mask config refuses the training set
    with ``match``, the box-only config trains on it; returns the loaded record of
    ``image_id``."""
    path = _variant(tiny, tmp_path,
                    lambda d: _ann(d, ann_id).__setitem__("segmentation", segmentation))
    datasets, opts = _train_on(tiny, path)
    with pytest.raises(ConfigDataError, match=match):
        _check(tmp_path, datasets, *opts)
    _check(tmp_path, datasets, *opts, config=BOX_ONLY)
    (record,) = [d for d in DatasetCatalog.get("own_train") if d["image_id"] == image_id]
    return record


def test_empty_segmentation_with_masks_on_names_the_annotation(tiny, tmp_path):
    record = _refused_with_masks_kept_without(
        tiny, tmp_path, 1010, [],
        r"MODEL.MASK_ON is True but 1 non-crowd annotations of the training set 'own_train' "
        r".* e.g. annotation id 1010 \(annotations\[3\]\) of image 'img_001.png'", 110)
    assert len(record["annotations"]) == 3  # a box-only model trains on its box


def test_degenerate_polygon_is_an_error_with_masks_and_a_box_without(tiny, tmp_path):
    """A polygon of 2 points: Detectron2's COCO loader drops the whole instance; here a mask
    model refuses the set and a box-only model keeps the instance as a box."""
    record = _refused_with_masks_kept_without(
        tiny, tmp_path, 1020, [[2.0, 3.0, 12.0, 11.0]],
        r"1 non-crowd annotations of the training set 'own_train' .* have only polygons of "
        r"fewer than 3 points, e.g. annotation id 1020 \(annotations\[6\]\) of image "
        r"'img_002.jpg'", 120)
    kept = [a for a in record["annotations"] if "segmentation" not in a]
    assert len(record["annotations"]) == 3 and len(kept) == 1
    cat_class = MetadataCatalog.get("own_train").thing_dataset_id_to_contiguous_id[3]
    assert kept[0]["bbox"] == [2.0, 3.0, 10.0, 8.0] and kept[0]["category_id"] == cat_class


# ------------------------------------------------------------------ image files
def _break_image(tiny, index, how):
    path = os.path.join(tiny["images"], tiny["data"]["images"][index]["file_name"])
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) * 2 // 3])
    elif how == "not an image":
        open(path, "w").write("not an image\n")
    elif how == "other size":
        Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("index,how,error,message", [
    (1, "missing", DatasetFileError, r"does not exist"),
    (2, "truncated", DatasetFormatError, r"is a truncated or corrupt JPEG file \(OSError: "),
    (1, "truncated", DatasetFormatError, r"is a truncated or corrupt PNG file \(\w+Error: "),
    (2, "not an image", DatasetFormatError, r"is not an image file that PIL"),
    (1, "other size", DatasetFormatError, r"is 41x30 \(width x height, after EXIF orientation\) "
                                          r"but the json says 40x30"),
])
def test_every_image_file_is_checked(tiny, tmp_path, index, how, error, message):
    path = _break_image(tiny, index, how)
    datasets, opts = _train_on(tiny)
    image_id = tiny["data"]["images"][index]["id"]
    with pytest.raises(error, match=rf"1 of 4 image files cannot be used: image file "
                       rf"{path} \(image id {image_id}, images\[{index}\]\) {message}"):
        _check(tmp_path, datasets, *opts)


def test_data_appended_after_the_image_is_not_taken_for_truncation(tiny, tmp_path):
    """A JPEG with a video appended (motion photos) or a PNG with trailing bytes: PIL and so
    Detectron2 read them fine, and so does the check."""
    for name in ("img_000.jpg", "img_001.png"):
        with open(os.path.join(tiny["images"], name), "ab") as f:
            f.write(bytes(range(1, 200)) * 20)  # no end marker among the last bytes
    datasets, opts = _train_on(tiny)
    _check(tmp_path, datasets, *opts)


def test_exif_rotated_image_passes_when_the_json_has_the_rotated_size(tiny, tmp_path):
    """Stored 30 wide x 40 high with EXIF orientation 6 (rotate 90): Detectron2's read_image
    gives 40 x 30, the json's size."""
    path = os.path.join(tiny["images"], "img_000.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(path, exif=exif)
    assert read_image(path, "BGR").shape == (30, 40, 3)
    datasets, opts = _train_on(tiny)
    _check(tmp_path, datasets, *opts)
    # the json gives the stored size: the message names the EXIF orientation
    def stored_size(d):
        d["images"][0].update(width=30, height=40)
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 100]

    path = _variant(tiny, tmp_path, stored_size)
    with pytest.raises(DatasetFormatError, match=r"img_000.jpg \(image id 100, images\[0\]\) is "
                       r"stored as 30x40 .* with EXIF orientation 6, so Detectron2's read_image "
                       r"\(which applies the EXIF rotation\) reads it as 40x30, but the json says "
                       r"30x40"):
        inspect_annotation_file("own", path, tiny["images"])


def test_16_bit_png_is_refused(tiny, tmp_path):
    path = os.path.join(tiny["images"], "img_003.png")
    Image.fromarray(np.full((30, 40), 1000, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert read_image(path, "BGR").min() == 255  # what training would see: all white
    datasets, opts = _train_on(tiny)
    with pytest.raises(DatasetFormatError, match=r"img_003.png \(image id 130, images\[3\]\) has "
                       r"PIL mode 'I;16.*' .* convert the file to 8 bits per channel"):
        _check(tmp_path, datasets, *opts)


def test_many_files_are_checked_in_worker_processes(tmp_path):
    """Above the serial threshold the files are split over processes; same findings."""
    entries = []
    for k in range(300):
        path = str(tmp_path / f"{k}.png")
        Image.fromarray(np.full((4, 6), k % 256, np.uint8)).save(path)
        entries.append((k, path, 4, 6))
    entries[7] = (7, entries[7][1], 5, 6)
    os.remove(entries[250][1])
    expected = [(7, "is 6x4 (width x height, after EXIF orientation) but the json says 6x5"),
                (250, "does not exist")]
    assert check_image_files(entries, num_workers=1) == expected
    assert check_image_files(entries, num_workers=2) == expected


def test_second_inspection_comes_from_the_cache(tiny, tmp_path, monkeypatch):
    from rsloss_d2.data import user_datasets

    first = inspect_annotation_file("a", tiny["json"], tiny["images"])
    calls = []
    real = user_datasets._inspect_json
    monkeypatch.setattr(user_datasets, "_inspect_json",
                        lambda *a: calls.append(a) or real(*a))
    again = inspect_annotation_file("b", tiny["json"], tiny["images"])
    assert calls == [] and again.name == "b"
    assert (again.category_ids, again.num_rle_masks, again.num_instances) == \
        (first.category_ids, first.num_rle_masks, first.num_instances)
    # another image folder, or a changed json, is checked again
    other = str(tmp_path / "other_images")
    shutil.copytree(tiny["images"], other)
    inspect_annotation_file("c", tiny["json"], other)
    assert len(calls) == 1
    data = _copy(tiny["data"])
    data["annotations"][0]["segmentation"] = [[1, 1, 1]]
    write_json(tiny["json"], data)
    with pytest.raises(DatasetFormatError, match="must be a list of polygons"):
        inspect_annotation_file("d", tiny["json"], tiny["images"])
    assert len(calls) == 2


# ------------------------------------------------------------------ categories
def _val(tiny, tmp_path, edit):
    return ("own_val", _variant(tiny, tmp_path, edit, "val.json"), tiny["images"])


def _train_and_val(tiny, val):
    return [("own_train", tiny["json"], tiny["images"]), val], [
        "DATASETS.TRAIN", "('own_train',)", "DATASETS.TEST", "('own_val',)"]


def test_swapped_category_of_the_same_count_is_an_error(tiny, tmp_path):
    def swap(d):
        d["categories"][0] = {"id": 9, "name": "horse"}

    datasets, opts = _train_and_val(tiny, _val(tiny, tmp_path, swap))
    with pytest.raises(ConfigDataError, match=r"the categories of the test set 'own_val' differ "
                       r"from those of the training set 'own_train' \(matched by id and name\): "
                       r"a different name for the same id: 9 'dog' \(training\) vs 'horse'"):
        _check(tmp_path, datasets, *opts)
    # category ids shifted (same names)
    def shift(d):
        d["categories"] = [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}]
        for a in d["annotations"]:
            a["category_id"] = 4 if a["category_id"] == 3 else a["category_id"]

    datasets, opts = _train_and_val(tiny, _val(tiny, tmp_path, shift))
    with pytest.raises(ConfigDataError, match=r"the same name with another id: 'cat' id 3 "
                       r"\(training\) vs 4 \(test\)\. give both files the same category ids"):
        _check(tmp_path, datasets, *opts)


@pytest.mark.parametrize("eval_only", [False, True])
def test_val_set_with_an_extra_category_is_an_error(tiny, tmp_path, eval_only):
    def extra(d):
        d["categories"].append({"id": 5, "name": "bird"})

    datasets, opts = _train_and_val(tiny, _val(tiny, tmp_path, extra))
    with pytest.raises(ConfigDataError, match=r"test set 'own_val' .*categories the training set "
                       r"lacks \(the model cannot predict them\): 5 'bird'\. remove the extra "
                       r"categories and their annotations from the test json") as e:
        _check(tmp_path, datasets, *opts, eval_only=eval_only)
    assert "NUM_CLASSES 3" not in str(e.value)  # no advice that loads random heads


def test_eval_only_without_the_training_set_does_not_advise_another_num_classes(tiny, tmp_path):
    """Only the test set given: its count is compared with NUM_CLASSES, and the advice is to
    keep the weights' number of classes (another value leaves the class predictors random)."""
    def extra(d):
        d["categories"].append({"id": 5, "name": "bird"})

    datasets = [_val(tiny, tmp_path, extra)]
    with pytest.raises(ConfigDataError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 2 but the test set "
                       r"'own_val' has 3 categories \(cat, bird, dog\)\. "
                       r"MODEL.ROI_HEADS.NUM_CLASSES "
                       r"must stay the number of classes the weights were trained with .* give the "
                       r"training set with --dataset and DATASETS.TRAIN"):
        _check(tmp_path, datasets, "DATASETS.TEST", "('own_val',)", eval_only=True)


def test_subset_of_categories_needs_the_key_and_is_evaluated_on_its_own(tiny, tmp_path):
    from detectron2.structures import Boxes, Instances

    from rsloss_d2.evaluation.build import build_evaluator

    def only_cats(d):
        d["categories"] = [{"id": 3, "name": "cat"}]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] == 3]

    datasets, opts = _train_and_val(tiny, _val(tiny, tmp_path, only_cats))
    with pytest.raises(ConfigDataError, match=r"training categories it lacks: 9 'dog'\. list all "
                       r"training categories in the test json, or set "
                       r"DATASETS.TEST_CATEGORY_SUBSET True"):
        _check(tmp_path, datasets, *opts)
    args = _check(tmp_path, datasets, *opts, "DATASETS.TEST_CATEGORY_SUBSET", "True")
    engine.register_datasets(args)  # as every training process does
    meta = MetadataCatalog.get("own_val")
    assert meta.thing_classes == MetadataCatalog.get("own_train").thing_classes == ["cat", "dog"]
    with open(meta.json_file) as f:  # the evaluators' ground truth: all the model's categories
        assert [c["id"] for c in json.load(f)["categories"]] == [3, 9]
    # the model predicts its 'cat' boxes right and a 'dog' box the test set does not have:
    # evaluated on 'cat' only (AP 100), 'dog' has no ground truth
    cfg = engine.build_cfg(args)
    evaluator = build_evaluator(cfg, "own_val", str(tmp_path / "eval"))
    evaluator.reset()
    for d in DatasetCatalog.get("own_val"):
        boxes = [[x, y, x + w, y + h] for x, y, w, h in
                 (a["bbox"] for a in d["annotations"] if not a.get("iscrowd"))]
        classes = [a["category_id"] for a in d["annotations"] if not a.get("iscrowd")]
        boxes, classes = boxes + [[20.0, 10.0, 35.0, 25.0]], classes + [1]
        inst = Instances((d["height"], d["width"]), pred_boxes=Boxes(torch.tensor(boxes)),
                         scores=torch.linspace(0.9, 0.5, len(boxes)),
                         pred_classes=torch.tensor(classes))
        evaluator.process([{"image_id": d["image_id"], "height": d["height"],
                            "width": d["width"]}], [{"instances": inst}])
    bbox = evaluator.evaluate()["bbox"]
    assert bbox["AP"] == pytest.approx(100.0) and bbox["AP-cat"] == pytest.approx(100.0)
    assert np.isnan(bbox["AP-dog"])


def test_own_training_data_with_the_configs_builtin_test_set(tiny, tmp_path, capsys):
    datasets, opts = _train_on(tiny)
    opts[-1] = "('shapes_val',)"
    with pytest.raises(ConfigDataError, match=r"test set 'shapes_val' differ from those of the "
                       r"training set 'own_train'.*DATASETS.TEST names 'shapes_val', which is not "
                       r"one of your --dataset sets .*register your validation set with "
                       r"--dataset"):
        _check(tmp_path, datasets, *opts)
    # own data with shapes' categories: a warning, and no baseline comparison after training
    from rsloss_d2.data.synthetic import SHAPES_CATEGORIES
    from rsloss_d2.evaluation.build import format_baseline_comparison

    def as_shapes(d):
        d["categories"] = [{"id": c["id"], "name": c["name"]} for c in SHAPES_CATEGORIES]
        for a in d["annotations"]:
            a["category_id"] = 1 if a["category_id"] == 3 else 2

    datasets, _ = _train_on(tiny, _variant(tiny, tmp_path, as_shapes))
    args = _check(tmp_path, datasets, *opts, num_classes=8)
    assert "warning: the training set 'own_train' is your own (--dataset) but the test set " \
           "'shapes_val' is not" in capsys.readouterr().out
    cfg = engine.build_cfg(args)
    assert cfg.TEST.BASELINE_DATASET == "shapes_val"
    assert format_baseline_comparison(cfg, {"shapes_val": {"bbox": {"AP": 50.0}}}) is None
    shapes_cfg = cfg.clone()
    shapes_cfg.defrost()
    shapes_cfg.DATASETS.TRAIN = ("shapes_train",)
    assert format_baseline_comparison(shapes_cfg, {"shapes_val": {"bbox": {"AP": 50.0}}})


# ------------------------------------------------------------------ training set content
@pytest.mark.parametrize("filter_empty", ["True", "False"])
def test_training_set_without_annotations(tiny, tmp_path, filter_empty):
    path = _variant(tiny, tmp_path, lambda d: d.__setitem__("annotations", []))
    datasets, opts = _train_on(tiny, path)
    with pytest.raises(ConfigDataError, match=rf"the training set 'own_train' \({path}\) has no "
                       r"annotations to train on \(4 images, 0 annotations"):
        _check(tmp_path, datasets, *opts, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", filter_empty)
    # only crowd regions: nothing to train on either
    only_crowd = _variant(tiny, tmp_path, lambda d: d.__setitem__(
        "annotations", [a for a in d["annotations"] if a["iscrowd"]]), "crowd.json")
    datasets, opts = _train_on(tiny, only_crowd)
    with pytest.raises(ConfigDataError, match=r"3 annotations, none of them a non-crowd object"):
        _check(tmp_path, datasets, *opts, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", filter_empty)


@pytest.mark.parametrize("config,key", [(RS_ATSS, "MODEL.RETINANET.NUM_CLASSES"),
                                        (RS_YOLACT, "MODEL.YOLACT.NUM_CLASSES")])
def test_fewer_classes_than_categories_even_without_the_check(tiny, tmp_path, config, key):
    datasets, opts = _train_on(tiny)
    with pytest.raises(ConfigDataError, match=rf"{key} is 1 but the training set 'own_train' has "
                       r"2 categories \(cat, dog\): its class labels 0..1 do not fit a head of 1 "
                       r"classes, even with DATASETS.CHECK_NUM_CLASSES False"):
        _check(tmp_path, datasets, *opts, "DATASETS.CHECK_NUM_CLASSES", "False",
               config=config, num_classes=1)
    _check(tmp_path, datasets, *opts, "DATASETS.CHECK_NUM_CLASSES", "False", config=config,
           num_classes=3)  # more classes than categories: allowed


def test_rle_string_decoding_matches_pycocotools():
    """decode_rle_string inverts pycocotools' encoder (round trip through pycocotools); the
    vectorised check of many strings flags exactly those the single decoder rejects."""
    import pycocotools.mask as mask_utils

    from rsloss_d2.data.file_checks import (decode_rle_string, invalid_rle_strings,
                                            rle_counts_problem)

    rng = np.random.default_rng(0)
    strings, areas = [], []
    for k in range(400):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if k % 5 == 0:
            mask[:] = k % 2
        encoded = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        runs = decode_rle_string(encoded)
        assert runs.sum() == h * w
        again = mask_utils.frPyObjects({"counts": runs.tolist(), "size": [h, w]}, h, w)
        assert again["counts"].decode("ascii") == encoded
        assert (mask_utils.decode({"counts": encoded, "size": [h, w]}) == mask).all()
        broken = [encoded, encoded[:-1], encoded + "1", "#" + encoded, encoded + "g", ""]
        strings += broken
        areas += [h * w] * len(broken)
    expected = [k for k, (s, a) in enumerate(zip(strings, areas))
                if rle_counts_problem(s, a, 1) is not None]
    assert 0 < len(expected) < len(strings)
    assert invalid_rle_strings(strings, areas).tolist() == expected
    assert 0 not in expected  # pycocotools' own strings pass
