"""Seeded generator of synthetic instance-segmentation datasets ("shapes").

Two flavours, both written as real image files plus one annotation json per split:

* ``shapes`` -- COCO format. 8 categories of shapes that differ by form *and* colour/texture,
  polygon masks of the *visible* part of every object (later objects occlude earlier ones),
  ``area``/``bbox`` from that mask, objects at COCO small / medium / large sizes, a few
  ``iscrowd=1`` regions (clusters of tiny shapes annotated as one RLE region) and some images
  without any object.
* ``shapes_lt`` -- LVIS format (the schema ``lvis.LVIS`` loads): 36 categories (6 forms x 6
  colour/texture styles) with long-tailed image counts. ``frequency`` follows the LVIS rule on the
  *training* split (rare: 1-10 training images, common: 11-100, frequent: >100), and each category
  carries ``image_count`` / ``instance_count``; each image has ``neg_category_ids`` (verified
  absent categories) and ``not_exhaustive_category_ids`` (categories with unlabeled instances:
  for those, some drawn instances are deliberately left out of the annotations, as in LVIS).

Everything is a pure function of ``(seed, split, num_images, image_size)``: the same arguments
give byte-identical files. Command line::

    python -m rsloss_d2.data.synthetic --root datasets --num-train 600 --num-val 100
"""
import argparse
import json
import math
import os
import zlib

import cv2
import numpy as np
from tqdm import tqdm

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_LT_CATEGORIES",
    "generate_shapes",
    "generate_shapes_lt",
    "lvis_frequency",
    "main",
]

# form name -> function(radius) returning an (K, 2) polygon around the origin (or "circle"/...)
_FORMS = ("circle", "square", "triangle", "star", "hexagon", "cross", "ellipse", "diamond")

# (name, form, BGR colour, texture)
SHAPES_CATEGORIES = [
    {"id": 1, "name": "red_circle", "form": "circle", "color": (40, 40, 220), "texture": "solid"},
    {"id": 2, "name": "green_square", "form": "square", "color": (60, 190, 60), "texture": "solid"},
    {"id": 3, "name": "blue_triangle", "form": "triangle", "color": (220, 90, 30), "texture": "stripes"},
    {"id": 4, "name": "yellow_star", "form": "star", "color": (30, 220, 230), "texture": "solid"},
    {"id": 5, "name": "purple_hexagon", "form": "hexagon", "color": (170, 50, 150), "texture": "checker"},
    {"id": 6, "name": "orange_cross", "form": "cross", "color": (20, 140, 250), "texture": "solid"},
    {"id": 7, "name": "cyan_ellipse", "form": "ellipse", "color": (210, 210, 40), "texture": "dots"},
    {"id": 8, "name": "white_diamond", "form": "diamond", "color": (235, 235, 235), "texture": "stripes"},
]

_LT_FORMS = ("circle", "square", "triangle", "star", "hexagon", "cross")
_LT_STYLES = (
    ("red", (40, 40, 220), "solid"),
    ("green", (60, 190, 60), "solid"),
    ("blue", (220, 90, 30), "solid"),
    ("yellow", (30, 220, 230), "stripes"),
    ("magenta", (200, 60, 200), "checker"),
    ("white", (235, 235, 235), "dots"),
)
SHAPES_LT_CATEGORIES = [
    {"id": 1 + i * len(_LT_STYLES) + j, "name": f"{cname}_{form}", "form": form, "color": color,
     "texture": tex}
    for i, form in enumerate(_LT_FORMS)
    for j, (cname, color, tex) in enumerate(_LT_STYLES)
]

# COCO area ranges are on the object area: small < 32^2 <= medium < 96^2 <= large.
_SIZE_BINS = {"small": (7, 22), "medium": (24, 70), "large": (80, 125)}  # half-extent in pixels


def _rng(seed, split, index):
    """Independent deterministic stream per (seed, split, image index)."""
    key = zlib.crc32(f"{split}".encode())
    return np.random.default_rng([int(seed), key, int(index)])


def _polygon(form, radius, rng):
    """Polygon (K, 2) float of `form` with circumradius `radius`, centred at 0, random rotation."""
    theta = rng.uniform(0, 2 * math.pi)
    if form == "circle":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
        return pts
    if form == "ellipse":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), 0.55 * np.sin(t)], 1) * radius
    elif form == "square":
        pts = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], float) * radius / math.sqrt(2)
    elif form == "diamond":
        pts = np.array([[1, 0], [0, 0.6], [-1, 0], [0, -0.6]], float) * radius
    elif form == "triangle":
        t = np.array([0, 2, 4]) * math.pi / 3 + math.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif form == "hexagon":
        t = np.arange(6) * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif form == "star":
        t = np.arange(10) * math.pi / 5 + math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * radius
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif form == "cross":
        a, b = 1.0, 0.33
        pts = np.array([[b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b], [-b, -a], [b, -a],
                        [b, -b], [a, -b], [a, b], [b, b]], float) * radius
    else:
        raise ValueError(form)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return pts @ rot.T


def _texture(texture, color, h, w, rng):
    """(h, w, 3) uint8 fill pattern in the category's colour."""
    base = np.empty((h, w, 3), np.float32)
    base[:] = color
    yy, xx = np.mgrid[0:h, 0:w]
    if texture == "stripes":
        period = int(rng.integers(5, 9))
        dark = ((xx + yy) // (period // 2 + 1)) % 2 == 0
        base[dark] *= 0.45
    elif texture == "checker":
        period = int(rng.integers(4, 8))
        dark = ((xx // period) + (yy // period)) % 2 == 0
        base[dark] *= 0.45
    elif texture == "dots":
        period = 6
        dark = ((xx % period) < 2) & ((yy % period) < 2)
        base[dark] *= 0.3
    shade = rng.uniform(0.85, 1.1)
    return np.clip(base * shade, 0, 255).astype(np.uint8)


def _background(size, rng):
    """Low-frequency coloured noise with a gradient: (size, size, 3) uint8."""
    coarse = rng.uniform(60, 150, size=(4, 4, 3)).astype(np.float32)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _mask_to_polygons(mask):
    """Binary (H, W) mask -> list of flat [x0, y0, x1, y1, ...] polygons (>= 3 points each)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2)
        if len(c) < 3:
            continue
        polys.append([float(v) + 0.5 for v in c.reshape(-1)])  # pixel centres
    return polys


def _uncompressed_rle(mask):
    """COCO uncompressed RLE (column-major run lengths, starting with zeros) of a binary mask."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _bbox_of(mask):
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _sample_half_extent(rng, image_size):
    """Half extent of a new object; the bins are for 256-pixel images and scale with the size."""
    name = rng.choice(["small", "medium", "large"], p=[0.35, 0.45, 0.2])
    lo, hi = _SIZE_BINS[name]
    scale = image_size / 256.0
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi)))) * scale


def _render_image(rng, size, objects, crowd=None):
    """Draw `objects` (list of (category dict, half_extent)) in order; later ones occlude earlier.

    Returns the image and, per object, its visible mask. `crowd` = (category, n) adds a cluster
    of n tiny shapes of one category whose union is returned as one extra mask (last).
    """
    img = _background(size, rng)
    masks = []
    for cat, r in objects:
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, size=2)
        poly = _polygon(cat["form"], r, rng) + [cx, cy]
        m = np.zeros((size, size), np.uint8)
        cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
        tex = _texture(cat["texture"], cat["color"], size, size, rng)
        img[m > 0] = tex[m > 0]
        for prev in masks:  # occlusion: the new object hides what is below it
            prev[m > 0] = 0
        masks.append(m)
    if crowd is not None:
        cat, n = crowd
        cx, cy = rng.uniform(0.15 * size, 0.85 * size, size=2)
        union = np.zeros((size, size), np.uint8)
        for _ in range(n):
            r = rng.uniform(3, 5) * max(size / 256.0, 0.5)
            ox, oy = rng.normal(0, 12 * size / 256.0, size=2)
            poly = _polygon(cat["form"], r, rng) + [cx + ox, cy + oy]
            m = np.zeros((size, size), np.uint8)
            cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, shift=2)
            tex = _texture(cat["texture"], cat["color"], size, size, rng)
            img[m > 0] = tex[m > 0]
            union |= m
        for prev in masks:
            prev[union > 0] = 0
        masks.append(union)
    return img, masks


def _replace_atomically(path, write):
    """``write(file)`` into a temporary file of this process, then rename it to ``path``.

    Two processes may generate the same (deterministic) dataset at once, e.g. two trainings started
    together on a fresh clone: each writes its own temporary file (a shared name would be renamed
    away under the other), and a reader sees either no file or a complete one, never a half-written
    image or annotation file. A failed write (e.g. a full disk) removes its temporary file and
    re-raises."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_image(path, img):
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), 92])
    assert ok
    _replace_atomically(path, lambda f: f.write(buf.tobytes()))


def _json_dump(obj, path):
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    _replace_atomically(path, lambda f: f.write(text.encode()))


def generate_shapes(root, split, num_images, image_size=256, seed=0, progress=True):
    """Write ``root/shapes/{split}/*.jpg`` and ``root/shapes/annotations/instances_{split}.json``.

    COCO format; see the module docstring. Returns the json path.
    """
    out_dir = os.path.join(root, "shapes", split)
    ann_dir = os.path.join(root, "shapes", "annotations")
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for idx in tqdm(range(num_images), desc=f"shapes_{split}", disable=not progress):
        rng = _rng(seed, "shapes_" + split, idx)
        image_id = idx + 1
        file_name = f"{image_id:06d}.jpg"
        empty = rng.random() < 0.06
        n_obj = 0 if empty else int(rng.integers(1, 7))
        objects = [(SHAPES_CATEGORIES[int(rng.integers(len(SHAPES_CATEGORIES)))],
                    _sample_half_extent(rng, image_size)) for _ in range(n_obj)]
        crowd = None
        if not empty and rng.random() < 0.05:
            crowd = (SHAPES_CATEGORIES[int(rng.integers(len(SHAPES_CATEGORIES)))],
                     int(rng.integers(6, 15)))
        img, masks = _render_image(rng, image_size, objects, crowd)
        _write_image(os.path.join(out_dir, file_name), img)
        images.append({"id": image_id, "file_name": file_name, "height": image_size,
                       "width": image_size})
        for k, m in enumerate(masks):
            is_crowd = crowd is not None and k == len(masks) - 1
            cat = crowd[0] if is_crowd else objects[k][0]
            area = int(m.sum())
            if area < 12:  # fully (or almost fully) occluded: nothing left to annotate
                continue
            if is_crowd:
                segm = _uncompressed_rle(m)
            else:
                segm = _mask_to_polygons(m)
                if not segm:
                    continue
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat["id"],
                                "segmentation": segm, "area": float(area), "bbox": _bbox_of(m),
                                "iscrowd": int(is_crowd)})
            ann_id += 1
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "shape"}
                  for c in SHAPES_CATEGORIES]
    path = os.path.join(ann_dir, f"instances_{split}.json")
    _json_dump({"info": {"description": f"rsloss_d2 synthetic shapes ({split}), seed {seed}"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}, path)
    return path


def lvis_frequency(train_image_count):
    """LVIS frequency group from the number of *training* images containing the category."""
    if train_image_count <= 10:
        return "r"
    if train_image_count <= 100:
        return "c"
    return "f"


def _lt_image_targets(num_images, rng):
    """Long-tailed number of images per LVIS-style category, one per category (36 values).

    Log-linear in the rank: the head category is in 45% of the images, the tail one in 1. With
    600 training images this gives about 5 frequent, 16 common and 15 rare categories.
    """
    n_cat = len(SHAPES_LT_CATEGORIES)
    ranks = np.arange(n_cat)
    head = max(0.45 * num_images, 1.0)
    counts = np.maximum(1, np.round(head ** ((n_cat - 1 - ranks) / (n_cat - 1)))).astype(int)
    perm = rng.permutation(n_cat)  # which category gets which rank
    return counts[perm]


def generate_shapes_lt(root, split, num_images, image_size=256, seed=0, progress=True,
                       train_image_counts=None):
    """Write ``root/shapes_lt/{split}/*.jpg`` and ``root/shapes_lt/annotations/lvis_{split}.json``.

    LVIS format with long-tailed categories; see the module docstring. ``frequency`` follows the
    LVIS rule on the training split: for ``split="train"`` it is computed from this split, for
    another split pass ``train_image_counts`` ({category_id: training image count}) -- the LVIS
    validation json carries the training statistics too. Returns the json path.
    """
    out_dir = os.path.join(root, "shapes_lt", split)
    ann_dir = os.path.join(root, "shapes_lt", "annotations")
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    cats = SHAPES_LT_CATEGORIES
    plan_rng = _rng(seed, "shapes_lt_plan", 0)  # same long tail for every split
    targets = _lt_image_targets(max(num_images, 1), plan_rng)
    # which images contain which categories (each image then gets 1-2 instances of each)
    split_rng = _rng(seed, "shapes_lt_assign_" + split, 0)
    per_image = [[] for _ in range(num_images)]
    for ci, cat in enumerate(cats):
        n = int(min(targets[ci], num_images))
        for i in split_rng.choice(num_images, size=n, replace=False):
            per_image[int(i)].append(cat)
    images, annotations = [], []
    ann_id = 1
    for idx in tqdm(range(num_images), desc=f"shapes_lt_{split}", disable=not progress):
        rng = _rng(seed, "shapes_lt_" + split, idx)
        image_id = idx + 1
        file_name = f"{image_id:06d}.jpg"
        objects = []
        for cat in per_image[idx][:6]:  # at most 6 categories per image
            for _ in range(int(rng.integers(1, 3))):
                objects.append((cat, _sample_half_extent(rng, image_size)))
        order = rng.permutation(len(objects))
        objects = [objects[i] for i in order]
        img, masks = _render_image(rng, image_size, objects)
        _write_image(os.path.join(out_dir, file_name), img)
        present = sorted({c["id"] for c, _ in objects})
        # categories with unlabeled instances: drop the annotation of one drawn instance
        not_exhaustive = [c for c in present if rng.random() < 0.08]
        dropped = set()
        for cid in not_exhaustive:
            ks = [k for k, (c, _) in enumerate(objects) if c["id"] == cid]
            if len(ks) > 1:
                dropped.add(ks[0])
        absent = [c["id"] for c in cats if c["id"] not in present]
        n_neg = min(len(absent), int(rng.integers(2, 7)))
        neg = sorted(int(v) for v in rng.choice(absent, size=n_neg, replace=False)) if n_neg else []
        images.append({"id": image_id, "file_name": file_name,
                       # Detectron2's LVIS loader takes "<split>/<file>" from coco_url
                       "coco_url": f"synthetic://shapes_lt/{split}/{file_name}",
                       "height": image_size, "width": image_size,
                       "neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive})
        for k, m in enumerate(masks):
            area = int(m.sum())
            if k in dropped or area < 12:
                continue
            segm = _mask_to_polygons(m)
            if not segm:
                continue
            annotations.append({"id": ann_id, "image_id": image_id,
                                "category_id": objects[k][0]["id"], "segmentation": segm,
                                "area": float(area), "bbox": _bbox_of(m)})
            ann_id += 1
    img_count = {c["id"]: 0 for c in cats}
    inst_count = {c["id"]: 0 for c in cats}
    seen = set()
    for a in annotations:
        inst_count[a["category_id"]] += 1
        if (a["image_id"], a["category_id"]) not in seen:
            seen.add((a["image_id"], a["category_id"]))
            img_count[a["category_id"]] += 1
    freq_counts = img_count if train_image_counts is None else train_image_counts
    categories = [{"id": c["id"], "name": c["name"], "synset": f"{c['name']}.n.01",
                   "synonyms": [c["name"]], "def": f"a {c['texture']} {c['form']}",
                   "image_count": img_count[c["id"]], "instance_count": inst_count[c["id"]],
                   "frequency": lvis_frequency(int(freq_counts[c["id"]]))} for c in cats]
    path = os.path.join(ann_dir, f"lvis_{split}.json")
    _json_dump({"info": {"description": f"rsloss_d2 synthetic shapes_lt ({split}), seed {seed}"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}, path)
    return path


# Sizes used when the datasets are generated on first use (the CLI can override them).
DEFAULT_SIZES = {"num_train": 600, "num_val": 100, "num_lt_train": 600, "num_lt_val": 100,
                 "image_size": 256}


def datasets_root():
    """``$DETECTRON2_DATASETS``, default ``datasets`` (relative to the working directory)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def generate_all(root, num_train=600, num_val=100, num_lt_train=600, num_lt_val=100,
                 image_size=256, seed=0, progress=True, which=("shapes", "shapes_lt")):
    """Generate the requested synthetic datasets under `root`. Returns {name: json path}."""
    out = {}
    if "shapes" in which:
        out["shapes_train"] = generate_shapes(root, "train", num_train, image_size, seed, progress)
        out["shapes_val"] = generate_shapes(root, "val", num_val, image_size, seed, progress)
    if "shapes_lt" in which:
        out["shapes_lt_train"] = generate_shapes_lt(root, "train", num_lt_train, image_size, seed,
                                                    progress)
        with open(out["shapes_lt_train"]) as f:
            train_counts = {c["id"]: c["image_count"] for c in json.load(f)["categories"]}
        out["shapes_lt_val"] = generate_shapes_lt(root, "val", num_lt_val, image_size, seed,
                                                  progress, train_image_counts=train_counts)
    return out


def main(argv=None):
    d = DEFAULT_SIZES
    p = argparse.ArgumentParser(description="(Re)generate the synthetic shapes datasets.")
    p.add_argument("--root", default=None, help="output root (default: $DETECTRON2_DATASETS or datasets/)")
    p.add_argument("--which", default="shapes,shapes_lt", help="comma list of: shapes, shapes_lt")
    p.add_argument("--num-train", type=int, default=d["num_train"])
    p.add_argument("--num-val", type=int, default=d["num_val"])
    p.add_argument("--num-lt-train", type=int, default=d["num_lt_train"])
    p.add_argument("--num-lt-val", type=int, default=d["num_lt_val"])
    p.add_argument("--image-size", type=int, default=d["image_size"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = args.root or datasets_root()
    paths = generate_all(root, args.num_train, args.num_val, args.num_lt_train, args.num_lt_val,
                         args.image_size, args.seed, which=tuple(args.which.split(",")))
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
