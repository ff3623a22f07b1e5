"""Registration in Detectron2's catalogs, generation on first use, and clear dataset errors."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import rsloss_d2  # noqa: F401  (registers the datasets)
from rsloss_d2.data import DatasetFileError, check_dataset_files, register_shapes_datasets
from rsloss_d2.data import datasets as ds


@pytest.fixture
def small_root(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEFAULT_SIZES", dict(num_train=6, num_val=3, num_lt_train=8,
                                                  num_lt_val=3, image_size=64))
    register_shapes_datasets(str(tmp_path))
    yield str(tmp_path)
    register_shapes_datasets()  # back to the default root


def test_registered_with_evaluator_types(small_root):
    for name, etype in [("shapes_train", "coco"), ("shapes_val", "coco"),
                        ("shapes_lt_train", "lvis"), ("shapes_lt_val", "lvis")]:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == etype
        assert meta.json_file.startswith(small_root)
    assert len(MetadataCatalog.get("shapes_train").thing_classes) == 8
    assert len(MetadataCatalog.get("shapes_lt_val").thing_classes) == 36


def test_generated_on_first_use_and_loaded(small_root):
    assert not os.path.exists(os.path.join(small_root, "shapes"))
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 3 and os.path.isfile(dicts[0]["file_name"])
    lt = DatasetCatalog.get("shapes_lt_train")
    assert len(lt) == 8 and os.path.isfile(lt[0]["file_name"])
    assert "neg_category_ids" in lt[0]
    cats = {a["category_id"] for d in lt for a in d["annotations"]}
    assert min(cats) >= 0 and max(cats) < 36  # 0-based contiguous ids


def test_corrupt_annotation_file_gives_clear_error(small_root):
    DatasetCatalog.get("shapes_val")  # generate
    path = MetadataCatalog.get("shapes_val").json_file
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(DatasetFileError, match="corrupt"):
        DatasetCatalog.get("shapes_val")


def test_missing_real_dataset_names_the_file(tmp_path):
    name = "rsloss_test_missing_coco"
    from detectron2.data.datasets import register_coco_instances

    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(tmp_path / "nope" / "instances.json"), str(tmp_path))
    with pytest.raises(DatasetFileError) as e:
        check_dataset_files([name])
    assert str(tmp_path / "nope" / "instances.json") in str(e.value)
    assert "datasets/README.md" in str(e.value)
    # builtin COCO registration: points at $DETECTRON2_DATASETS/coco/...
    with pytest.raises(DatasetFileError, match="instances_val2017.json"):
        check_dataset_files(["coco_2017_val"])
    with pytest.raises(KeyError, match="not registered"):
        check_dataset_files(["no_such_dataset"])
