"""A "foreign" COCO-format instance set, as another tool would export it: made from generated
`shapes` images but laid out and encoded the way researchers' own data comes:

* category ids non-contiguous and listed out of order (3, 90, 7, ...), other names;
* image ids non-contiguous; images in nested folders, a mix of JPEG, colour PNG and grayscale
  PNG (mode "L");
* masks: polygons for some objects, compressed RLE (``counts`` a string) for others,
  uncompressed RLE (``counts`` a list) for the crowd regions;
* images without any object (kept);
* no ``"info"`` and no ``"licenses"`` key.

:func:`make_tiny_coco` writes a much smaller set (a few tiny images, two categories, each kind of
mask once) for tests that break one thing in it.
"""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from rsloss_d2.data.synthetic import generate_all

FOREIGN_CATEGORY_IDS = [3, 90, 7, 12, 44, 5, 61, 20]  # shapes ids 1..8 -> these


def _convert_split(src_json, src_dir, dst_root, split, image_id_offset):
    with open(src_json) as f:
        data = json.load(f)
    cat_map = {c["id"]: FOREIGN_CATEGORY_IDS[i] for i, c in enumerate(data["categories"])}
    categories = [{"id": cat_map[c["id"]], "name": f"thing_{cat_map[c['id']]}",
                   "supercategory": "object"} for c in data["categories"]]
    categories = categories[::-1]  # not sorted by id
    img_map, images = {}, []
    for k, im in enumerate(data["images"]):
        new_id = image_id_offset + 7 * im["id"]
        img_map[im["id"]] = new_id
        bgr = cv2.imread(os.path.join(src_dir, im["file_name"]))
        stem = os.path.splitext(im["file_name"])[0]
        if k % 4 == 1:  # grayscale PNG in a nested folder
            rel = os.path.join(split, "gray", "png", stem + ".png")
            img = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), mode="L")
        elif k % 4 == 2:  # colour PNG
            rel = os.path.join(split, "colour", stem + ".png")
            img = Image.fromarray(bgr[:, :, ::-1])
        else:  # JPEG
            rel = os.path.join(split, "jpeg", "batch_%d" % (k % 3), stem + ".jpg")
            img = Image.fromarray(bgr[:, :, ::-1])
        os.makedirs(os.path.join(dst_root, "images", os.path.dirname(rel)), exist_ok=True)
        img.save(os.path.join(dst_root, "images", rel))
        images.append({"id": new_id, "file_name": rel, "height": im["height"],
                       "width": im["width"]})
    size_of = {im["id"]: (im["height"], im["width"]) for im in images}
    annotations = []
    for k, a in enumerate(data["annotations"]):
        a = dict(a, id=1000 + 3 * a["id"], image_id=img_map[a["image_id"]],
                 category_id=cat_map[a["category_id"]])
        if not a["iscrowd"] and k % 2 == 0:  # polygon -> compressed RLE string
            h, w = size_of[a["image_id"]]
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
            a["segmentation"] = {"size": [int(v) for v in rle["size"]],
                                 "counts": rle["counts"].decode("ascii")}
        annotations.append(a)
    out = {"images": images, "annotations": annotations, "categories": categories}
    path = os.path.join(dst_root, "annotations", f"{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    return path


def make_foreign_coco(root, num_train=80, num_val=16, image_size=256, seed=0):
    """Write the foreign set under `root`; returns {"train": json, "val": json, "images": dir}.
    All images share one folder `root/images` (nested below it), as exporters often do."""
    src = os.path.join(root, "_source")
    paths = generate_all(src, num_train=num_train, num_val=num_val, image_size=image_size,
                         seed=seed, progress=False, which=("shapes",))
    train = _convert_split(paths["shapes_train"], os.path.join(src, "shapes", "train"), root,
                           "train", 100)
    val = _convert_split(paths["shapes_val"], os.path.join(src, "shapes", "val"), root, "val",
                         50000)
    return {"train": train, "val": val, "images": os.path.join(root, "images")}


TINY_CATEGORIES = [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}]  # not sorted by id


def _tiny_image(seed, width, height):
    g = np.random.default_rng(seed)
    return (g.random((height, width, 3)) * 255).astype(np.uint8)


def make_tiny_coco(root, num_images=4, width=40, height=30):
    """A tiny COCO-format set under `root`: `num_images` random-pixel images (JPEG, then PNG,
    alternating; the last one has no object) of `width` x `height`, each object-bearing image
    with one polygon "cat", one compressed-RLE "dog" and one uncompressed-RLE crowd "cat".

    Returns {"json": path, "images": dir, "data": the json dict}; :func:`write_json` writes a
    changed copy.
    """
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    mask = np.zeros((height, width), np.uint8, order="F")
    mask[5:15, 10:30] = 1
    rle = mask_utils.encode(mask)
    crowd = np.zeros((height, width), np.uint8)
    crowd[20:26, 2:8] = 1
    flat = crowd.flatten(order="F")  # column-major runs, starting with a run of 0s
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    for k in range(num_images):
        name = f"img_{k:03d}" + (".jpg" if k % 2 == 0 else ".png")
        Image.fromarray(_tiny_image(k, width, height)).save(os.path.join(img_dir, name))
        image_id = 100 + 10 * k
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        if k == num_images - 1 and num_images > 1:
            continue  # an image without objects
        base = 1000 + 10 * k
        anns.append({"id": base, "image_id": image_id, "category_id": 3, "iscrowd": 0,
                     "bbox": [2.0, 3.0, 10.0, 8.0], "area": 60.0,
                     "segmentation": [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]]})
        anns.append({"id": base + 1, "image_id": image_id, "category_id": 9, "iscrowd": 0,
                     "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0,
                     "segmentation": {"size": [height, width],
                                      "counts": rle["counts"].decode("ascii")}})
        anns.append({"id": base + 2, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                     "bbox": [2.0, 20.0, 6.0, 6.0], "area": 36.0,
                     "segmentation": {"size": [height, width], "counts": counts}})
    data = {"images": images, "annotations": anns, "categories": list(TINY_CATEGORIES)}
    path = write_json(os.path.join(root, "annotations.json"), data)
    return {"json": path, "images": img_dir, "data": data}


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


if __name__ == "__main__":  # python tests/foreign_coco.py OUT_DIR
    import sys

    print(make_foreign_coco(sys.argv[1]))
