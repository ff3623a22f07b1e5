"""The synthetic datasets: loadable by pycocotools / lvis, deterministic, LVIS frequency rule."""
import collections
import hashlib
import json
import os

import numpy as np
import pytest
from lvis import LVIS
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from rsloss_d2.data import synthetic
from rsloss_d2.data.synthetic import generate_all, lvis_frequency


def _digest_tree(root):
    h = {}
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                h[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return h


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    paths = generate_all(root, num_train=80, num_val=20, num_lt_train=260, num_lt_val=40,
                         image_size=128, seed=3, progress=False)
    return root, paths


def test_coco_split_loads_and_has_required_properties(generated):
    root, paths = generated
    coco = COCO(paths["shapes_train"])
    assert len(coco.getCatIds()) >= 8
    assert len(coco.imgs) == 80
    anns = list(coco.anns.values())
    # every image file exists and is readable at the declared size
    import cv2

    for img in coco.imgs.values():
        im = cv2.imread(os.path.join(root, "shapes", "train", img["file_name"]))
        assert im is not None and im.shape[:2] == (img["height"], img["width"])
    # crowd regions (RLE) and normal polygon annotations
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd, "expected a few crowd regions"
    for a in crowd:
        assert isinstance(a["segmentation"], dict)
    for a in anns:
        if not a["iscrowd"]:
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
        # area is the mask area, and the bbox encloses the mask
        m = coco.annToMask(a)
        assert abs(m.sum() - a["area"]) <= 0.35 * a["area"] + 20
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(m)
        if len(xs):
            assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
    # COCO small / medium / large objects all present (area scale ~ image_size 128 here: the
    # generator draws the same pixel sizes, so large ones are rarer but present over 80 images)
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any()
    # some images have no object at all
    empty = [i for i in coco.imgs if not coco.getAnnIds(imgIds=[i])]
    assert empty
    # occlusion: some visible mask is smaller than its drawn bbox-implied shape would be
    assert len({a["category_id"] for a in anns}) == 8


def test_coco_crowd_rle_round_trips(generated):
    _, paths = generated
    coco = COCO(paths["shapes_train"])
    for a in coco.anns.values():
        if a["iscrowd"]:
            h, w = a["segmentation"]["size"]
            rle = mask_utils.frPyObjects(a["segmentation"], h, w)
            assert int(mask_utils.area(rle)) == int(a["area"])


def test_lvis_split_loads_and_frequency_follows_rule(generated):
    _, paths = generated
    train = LVIS(paths["shapes_lt_train"])
    val = LVIS(paths["shapes_lt_val"])
    assert len(train.cats) >= 30
    # recount training image counts from the annotations themselves
    counts = collections.Counter()
    for cat_id in train.cats:
        counts[cat_id] = len({a["image_id"] for a in train.anns.values() if a["category_id"] == cat_id})
    for cat_id, cat in train.cats.items():
        assert cat["image_count"] == counts[cat_id]
        n = counts[cat_id]
        expected = "r" if n <= 10 else ("c" if n <= 100 else "f")
        assert cat["frequency"] == expected == lvis_frequency(n)
        assert cat["instance_count"] == sum(1 for a in train.anns.values() if a["category_id"] == cat_id)
        # the validation json carries the training frequencies, as LVIS does
        assert val.cats[cat_id]["frequency"] == cat["frequency"]
    assert {c["frequency"] for c in train.cats.values()} == {"r", "c", "f"}
    for img in train.imgs.values():
        present = {a["category_id"] for a in train.anns.values() if a["image_id"] == img["id"]}
        assert not present & set(img["neg_category_ids"])
        assert set(img["not_exhaustive_category_ids"]) <= present | set(img["not_exhaustive_category_ids"])
    assert any(img["neg_category_ids"] for img in train.imgs.values())
    assert any(img["not_exhaustive_category_ids"] for img in train.imgs.values())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    kw = dict(num_train=12, num_val=4, num_lt_train=20, num_lt_val=4, image_size=96, progress=False)
    generate_all(a, seed=7, **kw)
    generate_all(b, seed=7, **kw)
    generate_all(c, seed=8, **kw)
    da, db, dc = _digest_tree(a), _digest_tree(b), _digest_tree(c)
    assert da == db and len(da) > 30
    assert da != dc


def test_cli_generates_requested_sizes(tmp_path):
    from rsloss_d2.data.synthetic import main

    main(["--root", str(tmp_path), "--which", "shapes", "--num-train", "5", "--num-val", "3",
          "--image-size", "64"])
    with open(tmp_path / "shapes" / "annotations" / "instances_val.json") as f:
        d = json.load(f)
    assert len(d["images"]) == 3 and d["images"][0]["width"] == 64
    assert not (tmp_path / "shapes_lt").exists()


def test_two_processes_writing_the_same_file_at_once(tmp_path, monkeypatch):
    """Another process (another pid) writes the same annotation file between this process's write
    and its rename: both renames succeed, the file is complete and no temporary file is left."""
    real_replace, real_getpid = os.replace, os.getpid
    path = str(tmp_path / "instances_train.json")
    interleaved = []

    def replace_after_the_other_process(src, dst):
        if not interleaved:
            interleaved.append(src)
            monkeypatch.setattr(os, "getpid", lambda: real_getpid() + 1)
            synthetic._json_dump({"writer": "other"}, path)  # the other process, start to end
            monkeypatch.setattr(os, "getpid", real_getpid)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_the_other_process)
    synthetic._json_dump({"writer": "this"}, path)
    with open(path) as f:
        assert json.load(f) == {"writer": "this"}  # the last rename wins, whole
    assert interleaved and os.listdir(tmp_path) == ["instances_train.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """A write that raises (a full disk) re-raises and leaves neither the file nor its temporary
    file behind."""
    def full_disk(f):
        f.write(b"{")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        synthetic._replace_atomically(str(tmp_path / "instances_train.json"), full_disk)
    assert os.listdir(tmp_path) == []
