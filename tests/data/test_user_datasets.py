"""A researcher's own COCO / LVIS json: `--dataset` registration, the up-front checks (each with
its message), and the config checks against the data (NUM_CLASSES, RLE -> bitmask)."""
import copy
import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from rsloss_d2.config import add_rsloss_config
from rsloss_d2.data import DatasetFileError
from rsloss_d2.data.config_checks import ConfigDataError, check_config_against_data
from rsloss_d2.data.user_datasets import (
    DatasetFormatError,
    inspect_annotation_file,
    register_from_args,
)

from foreign_coco import FOREIGN_CATEGORY_IDS


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    from foreign_coco import make_foreign_coco

    return make_foreign_coco(str(tmp_path_factory.mktemp("foreign_small")), num_train=12,
                             num_val=4, image_size=128)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_foreign_set_is_inspected_and_registered(foreign):
    s = inspect_annotation_file("own_train", foreign["train"], foreign["images"])
    data = _load(foreign["train"])
    assert s.format == "coco" and "info" not in data and "licenses" not in data
    assert s.category_ids == sorted(FOREIGN_CATEGORY_IDS) and s.num_categories == 8
    rle = [a for a in data["annotations"] if isinstance(a["segmentation"], dict)
           and not a["iscrowd"]]
    assert s.num_rle_masks == len(rle) > 0 and s.num_images == 12
    register_from_args([("own_train", foreign["train"], foreign["images"])])
    meta = MetadataCatalog.get("own_train")
    assert meta.thing_classes == [f"thing_{i}" for i in sorted(FOREIGN_CATEGORY_IDS)]
    assert meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get("own_train")
    assert len(dicts) == 12 and all(os.path.isfile(d["file_name"]) for d in dicts)
    # non-contiguous ids -> contiguous classes in increasing id order
    id_to_class = {cid: i for i, cid in enumerate(sorted(FOREIGN_CATEGORY_IDS))}
    for d in dicts:
        want = sorted(id_to_class[a["category_id"]] for a in data["annotations"]
                      if a["image_id"] == d["image_id"])
        assert sorted(a["category_id"] for a in d["annotations"]) == want
    assert any(not d["annotations"] for d in dicts)  # empty images are kept


def _broken(foreign, tmp_path, edit):
    data = _load(foreign["train"])
    edit(data)
    return _write(tmp_path, data)


def _first_non_crowd(data):
    return next(a for a in data["annotations"] if not a["iscrowd"])


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("annotations"), r"required key 'annotations' is missing"),
    (lambda d: d.__setitem__("categories", {"a": 1}), r"required key 'categories' .*not a list"),
    (lambda d: _first_non_crowd(d).__setitem__("bbox", [1, 2, 3]),
     r"annotation id \d+ \(annotations\[\d+\]\) 'bbox' must be \[x, y, width, height\]"),
    (lambda d: _first_non_crowd(d).__setitem__("bbox", [1, 2, -3, 4]), r"'bbox' must be"),
    (lambda d: _first_non_crowd(d).__setitem__("segmentation", [[1, 2, 3, 4, 5]]),
     r"'segmentation' must be a list of polygons"),
    (lambda d: _first_non_crowd(d).__setitem__("segmentation", {"counts": "abc", "size": [5, 5]}),
     r"RLE 'segmentation' size \[5, 5\] is not the image's \[height, width\] = \[128, 128\]"),
    (lambda d: _first_non_crowd(d).__setitem__("category_id", 4),
     r"refers to category_id 4, which is not in 'categories'"),
    (lambda d: _first_non_crowd(d).__setitem__("image_id", -5),
     r"refers to image_id -5, which is not in 'images'"),
    (lambda d: d["images"][3].pop("height"), r"image id \d+ \(images\[3\]\) has no 'height'"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), r"category id \d+ appears twice"),
])
def test_malformed_annotation_file_is_a_clear_error(foreign, tmp_path, edit, message):
    path = _broken(foreign, tmp_path, edit)
    with pytest.raises(DatasetFormatError, match=message) as e:
        inspect_annotation_file("own_bad", path, foreign["images"])
    assert "dataset 'own_bad'" in str(e.value) and path in str(e.value)


def test_unreadable_json_and_missing_files(foreign, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match="not valid json"):
        inspect_annotation_file("own_bad", str(bad), foreign["images"])
    with pytest.raises(DatasetFileError, match="annotation file .*nope.json does not exist"):
        inspect_annotation_file("own_bad", str(tmp_path / "nope.json"), foreign["images"])
    with pytest.raises(DatasetFileError, match="image folder .* does not exist"):
        inspect_annotation_file("own_bad", foreign["train"], str(tmp_path / "no_images"))
    # a sampled image file is missing (the last image is always sampled)
    data = _load(foreign["train"])
    data["images"][-1]["file_name"] = "train/missing/lost.png"
    path = _write(tmp_path, data)
    with pytest.raises(DatasetFileError, match=r"image file .*train/missing/lost.png \(image id"):
        inspect_annotation_file("own_bad", path, foreign["images"])


def _lvis_like(foreign):
    """The foreign set's JPEG images in LVIS format (ids 1..K, frequencies, federated image
    lists, `coco_url` whose last folder is found under the image root train/jpeg/)."""
    data = _load(foreign["train"])
    data["images"] = [im for im in data["images"] if im["file_name"].startswith("train/jpeg/")]
    kept = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept
                           and isinstance(a["segmentation"], list)]  # LVIS: polygons only
    remap = {cid: i + 1 for i, cid in enumerate(sorted(FOREIGN_CATEGORY_IDS))}
    for c in data["categories"]:
        c["id"], c["frequency"] = remap[c["id"]], "f"
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    for im in data["images"]:
        folder, name = os.path.split(im["file_name"])
        im["coco_url"] = f"http://x/{folder}/{name}"
        im["neg_category_ids"], im["not_exhaustive_category_ids"] = [], []
    return data


def test_lvis_format_is_recognised_and_checked(foreign, tmp_path):
    data = _lvis_like(foreign)
    path = _write(tmp_path, data)
    root = os.path.join(foreign["images"], "train", "jpeg")
    s = inspect_annotation_file("own_lvis", path, root)
    assert s.format == "lvis" and s.category_ids == list(range(1, 9))
    register_from_args([("own_lvis", path, root)])
    dicts = DatasetCatalog.get("own_lvis")
    assert len(dicts) == len(data["images"]) and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert MetadataCatalog.get("own_lvis").evaluator_type == "lvis"
    bad = copy.deepcopy(data)
    del bad["categories"][2]["frequency"]
    with pytest.raises(DatasetFormatError, match=r"categories\[2\] .* needs 'frequency'"):
        inspect_annotation_file("own_lvis", _write(tmp_path, bad, "b1.json"), root)
    bad = copy.deepcopy(data)
    bad["categories"][0]["id"] = 40
    with pytest.raises(DatasetFormatError, match="category ids must be 1..K"):
        inspect_annotation_file("own_lvis", _write(tmp_path, bad, "b2.json"), root)
    bad = copy.deepcopy(data)
    bad["annotations"][0]["segmentation"] = {"size": [128, 128], "counts": "PP`0"}
    with pytest.raises(DatasetFormatError, match="LVIS loader reads polygon masks only"):
        inspect_annotation_file("own_lvis", _write(tmp_path, bad, "b4.json"), root)
    bad = copy.deepcopy(data)
    del bad["images"][1]["neg_category_ids"]
    with pytest.raises(DatasetFormatError, match="needs the list 'neg_category_ids'"):
        inspect_annotation_file("own_lvis", _write(tmp_path, bad, "b3.json"), root)


def _cfg(**opts):
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_num_classes_must_match_the_training_set(foreign):
    summaries = register_from_args([("own_train", foreign["train"], foreign["images"])])
    cfg = _cfg(**{"DATASETS.TRAIN": ("own_train",), "MODEL.ROI_HEADS.NUM_CLASSES": 3})
    with pytest.raises(ConfigDataError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 3 but the "
                       r"training set 'own_train' has 8 categories \(thing_3, thing_5"):
        check_config_against_data(cfg, summaries)
    # a user who means it may train more classes than categories, never fewer (the labels
    # 0..7 would not fit a head of 3 classes: RS-ATSS / RS-YOLACT crashed inside the loss)
    cfg.DATASETS.CHECK_NUM_CLASSES = False
    with pytest.raises(ConfigDataError, match=r"NUM_CLASSES is 3 but the training set "
                       r"'own_train' has 8 categories .*do not fit a head of 3 classes, even "
                       r"with DATASETS.CHECK_NUM_CLASSES False"):
        check_config_against_data(cfg, summaries)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 12
    check_config_against_data(cfg, summaries)
    # other meta-architectures check their own key
    cfg = _cfg(**{"DATASETS.TRAIN": ("own_train",), "MODEL.META_ARCHITECTURE": "RetinaNet",
                  "MODEL.RETINANET.NUM_CLASSES": 80, "MODEL.ROI_HEADS.NUM_CLASSES": 8})
    with pytest.raises(ConfigDataError, match="MODEL.RETINANET.NUM_CLASSES is 80"):
        check_config_against_data(cfg, summaries)
    # datasets registered elsewhere are checked through their metadata (shapes: 8 classes)
    cfg = _cfg(**{"DATASETS.TRAIN": ("shapes_train",), "MODEL.ROI_HEADS.NUM_CLASSES": 80})
    with pytest.raises(ConfigDataError, match="'shapes_train' has 8 categories"):
        check_config_against_data(cfg, {})
    # --eval-only checks the test sets
    cfg = _cfg(**{"DATASETS.TRAIN": ("shapes_train",), "DATASETS.TEST": ("own_train",),
                  "MODEL.ROI_HEADS.NUM_CLASSES": 8})
    assert check_config_against_data(cfg, summaries, eval_only=True) == ([], [])


def test_rle_masks_switch_to_bitmask_and_missing_masks_are_an_error(foreign, tmp_path):
    summaries = register_from_args([("own_train", foreign["train"], foreign["images"])])
    cfg = _cfg(**{"DATASETS.TRAIN": ("own_train",), "MODEL.ROI_HEADS.NUM_CLASSES": 8,
                  "MODEL.MASK_ON": True})
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    extra, messages = check_config_against_data(cfg, summaries)
    assert extra == ["INPUT.MASK_FORMAT", "bitmask"]
    assert len(messages) == 1 and "stores" in messages[0] and "bitmask" in messages[0]
    cfg.INPUT.MASK_FORMAT = "bitmask"
    assert check_config_against_data(cfg, summaries) == ([], [])
    data = _load(foreign["train"])
    _first_non_crowd(data).pop("segmentation")
    path = _write(tmp_path, data)
    summaries = register_from_args([("own_nomask", path, foreign["images"])])
    cfg = _cfg(**{"DATASETS.TRAIN": ("own_nomask",), "MODEL.ROI_HEADS.NUM_CLASSES": 8,
                  "MODEL.MASK_ON": True})
    with pytest.raises(ConfigDataError, match="1 non-crowd annotations of the training set "
                                              "'own_nomask'"):
        check_config_against_data(cfg, summaries)


def test_every_cpu_config_has_a_checked_num_classes_matching_its_data():
    """Each shapes / shapes_lt config names the NUM_CLASSES key(s) of its meta-architecture, and
    they agree with its training set (the check would stop a mismatch)."""
    import glob

    from rsloss_d2.data.config_checks import num_classes_keys

    from conftest import REPO

    files = sorted(glob.glob(os.path.join(REPO, "configs", "shapes*", "*.yaml")))
    leaves = [f for f in files if not os.path.basename(f).startswith("Base")]
    assert len(leaves) >= 7
    for path in leaves:
        cfg = get_cfg()
        add_rsloss_config(cfg)
        cfg.merge_from_file(path)
        assert num_classes_keys(cfg), (path, cfg.MODEL.META_ARCHITECTURE)
        check_config_against_data(cfg, {})
        key = num_classes_keys(cfg)[0]
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] += 1
        with pytest.raises(ConfigDataError, match=key):
            check_config_against_data(cfg, {})
