#!/usr/bin/env python
"""Time the up-front checks of a `--dataset` set (every annotation, every image header) on a
generated set of many tiny images, first without the cache, then from it.

    python tools/benchmarks/benchmark_dataset_check.py                   # 20,000 images
    python tools/benchmarks/benchmark_dataset_check.py --images 5000 --workers 1

The set (written once to `--root`, default a temporary folder) has tiny JPEG and PNG images
(16 x 12) and COCO's mix of masks per image: 7 polygons, one compressed RLE, one uncompressed
RLE crowd region. Timed: the json checks alone (`inspect_annotation_file(...,
check_images=False)`), the image-file checks alone with 1 process and with `--workers`
(default: the usable CPUs), the whole first check (empty cache) and the cached second run. The
last line scales the first check linearly to COCO train (118k images, 860k annotations); real
images are larger files, but only their headers and last bytes are read.
"""
import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices at import

from rsloss_d2.data.file_checks import check_image_files, default_num_workers
from rsloss_d2.data.user_datasets import inspect_annotation_file

WIDTH, HEIGHT = 16, 12
COCO_IMAGES, COCO_ANNOTATIONS = 118_287, 860_001


def make_set(root, num_images):
    """Write `num_images` tiny images and their annotation json under `root`; returns the
    json path and the image folder (reused if already there)."""
    img_dir = os.path.join(root, "images")
    path = os.path.join(root, f"instances_{num_images}.json")
    if os.path.isfile(path):
        return path, img_dir
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8, order="F")
    mask[2:8, 3:12] = 1
    rle = mask_utils.encode(mask)["counts"].decode("ascii")
    crowd = [20, 4, 8, 4, 156]  # column-major runs summing to 16 * 12
    images, anns = [], []
    for k in range(num_images):
        name = f"{k // 1000:03d}/{k:06d}" + (".jpg" if k % 2 else ".png")
        os.makedirs(os.path.join(img_dir, os.path.dirname(name)), exist_ok=True)
        pixels = (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(img_dir, name))
        images.append({"id": k + 1, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for j in range(7):
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1 + j % 3,
                         "iscrowd": 0, "bbox": [1.0, 1.0, 6.0, 5.0], "area": 30.0,
                         "segmentation": [[1.0, 1.0, 7.0, 1.0, 7.0, 6.0, 1.0, 6.0]]})
        anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 2, "iscrowd": 0,
                     "bbox": [3.0, 2.0, 9.0, 6.0], "area": 54.0,
                     "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle}})
        anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 3, "iscrowd": 1,
                     "bbox": [1.0, 8.0, 2.0, 4.0], "area": 8.0,
                     "segmentation": {"size": [HEIGHT, WIDTH], "counts": crowd}})
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path, img_dir


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=default_num_workers())
    p.add_argument("--root", default=None, help="where the set is written (default: temporary)")
    args = p.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="dataset_check_bench_")
    t_make, (path, img_dir) = timed(lambda: make_set(root, args.images))
    cache = os.path.join(root, "cache")
    os.environ["RSLOSS_D2_CACHE_DIR"] = cache
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average "
          f"{os.getloadavg()[0]:.1f} at the start), "
          f"{args.images} images ({os.path.getsize(path) / 1e6:.1f} MB json, written in "
          f"{t_make:.1f} s)")
    t_json, summary = timed(lambda: inspect_annotation_file("bench", path, img_dir,
                                                            check_images=False))
    print(f"json checks ({summary.num_annotations} annotations):      {t_json:6.2f} s")
    with open(path) as f:
        images = json.load(f)["images"]
    entries = [(i, os.path.join(img_dir, im["file_name"]), im["height"], im["width"])
               for i, im in enumerate(images)]
    for workers in sorted({1, args.workers}):
        t, problems = timed(lambda: check_image_files(entries, workers))
        assert not problems, problems[:3]
        label = f"{workers} process{'es' if workers > 1 else '  '}"
        print(f"image files, {label}:           {t:6.2f} s "
              f"({1e6 * t / len(entries):.0f} us per image)")
    shutil.rmtree(cache, ignore_errors=True)
    t_first, _ = timed(lambda: inspect_annotation_file("bench", path, img_dir))
    print(f"first check (json + image files):    {t_first:6.2f} s")
    t_cached, _ = timed(lambda: inspect_annotation_file("bench", path, img_dir))
    print(f"second check (cached):               {t_cached:6.3f} s")
    scale = COCO_IMAGES / args.images
    print(f"scaled to COCO train ({COCO_IMAGES} images, {COCO_ANNOTATIONS} annotations): "
          f"~{t_first * scale:.0f} s the first time, {t_cached:.3f} s after")


if __name__ == "__main__":
    main()
