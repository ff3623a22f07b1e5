"""A researcher's own COCO- or LVIS-format dataset: checked up front, then registered.

`tools/train_net.py --dataset NAME JSON IMAGE_DIR` (and `tools/demo.py`) call
:func:`inspect_annotation_file` once, before any training process starts, and
:func:`register_user_dataset` with its result in every process. The inspection reads the json
once and stops with a :class:`DatasetFormatError` naming the dataset, file, key and value of the
first problem it finds (instead of a crash inside a DataLoader worker after hours of training);
missing files give :class:`DatasetFileError`.

What is checked (Detectron2's loaders and evaluators need all of it):

* the file is readable json with ``images``, ``annotations`` and ``categories`` lists;
* categories have unique ``id`` and a ``name``; images unique ``id``, ``file_name`` (COCO) or
  ``coco_url`` (LVIS: Detectron2's LVIS loader takes the path from it), ``height``, ``width``;
* annotations refer to an existing image and category, ``bbox`` is ``[x, y, w, h]`` of 4
  finite numbers with ``w, h >= 0``, ``segmentation`` (if given) is a list of polygons (even
  number of coordinates) or an RLE dict whose ``size`` is the image's ``[height, width]``;
* a few image files (first, last and evenly spaced ones) exist under the image folder;
* LVIS format (recognised by ``frequency`` in categories or ``neg_category_ids`` /
  ``not_exhaustive_category_ids`` in images): category ids are ``1..K`` (Detectron2 maps id
  ``k`` to class ``k - 1``), every category has ``frequency`` and every image both id lists
  (the LVIS evaluation's rare / common / frequent split and federated rules read them); masks
  are polygons of at least 3 points (Detectron2's LVIS loader asserts on anything else).

``"info"`` and ``"licenses"`` are optional (the evaluators fill them in, see
``rsloss_d2/evaluation/evaluators.py``). Polygons with fewer than 3 points are dropped by
Detectron2's COCO loader with a warning, as for any Detectron2 dataset.
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json

from .datasets import DatasetFileError

__all__ = [
    "DatasetFormatError",
    "DatasetSummary",
    "inspect_annotation_file",
    "register_user_dataset",
]

# how many image files are looked for up front (first, last and evenly spaced in between)
NUM_IMAGE_SAMPLES = 8


class DatasetFormatError(ValueError):
    """An annotation file that Detectron2 could not load, train or evaluate on."""


@dataclass
class DatasetSummary:
    """What the up-front checks learnt about one annotation file (picklable: it is handed to
    the training processes so that they do not read the json again)."""

    name: str
    json_file: str
    image_root: str
    format: str  # "coco" or "lvis"
    category_ids: List[int] = field(default_factory=list)  # sorted
    category_names: List[str] = field(default_factory=list)  # in the order of category_ids
    num_images: int = 0
    num_annotations: int = 0
    num_rle_masks: int = 0  # non-crowd annotations whose mask is an RLE dict
    num_without_segmentation: int = 0  # non-crowd annotations without a mask

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    def __repr__(self):  # short: it is printed with the command-line arguments
        return (f"DatasetSummary({self.name!r}, {self.format}, {self.json_file!r}, "
                f"{self.num_categories} categories, {self.num_images} images, "
                f"{self.num_annotations} annotations, {self.num_rle_masks} RLE masks)")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fail(summary, what):
    raise DatasetFormatError(f"dataset '{summary.name}' ({summary.json_file}): {what}")


def _short(value, limit=80):
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_segmentation(summary, ann, image, where):
    segm = ann["segmentation"]
    lvis = summary.format == "lvis"
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2 or not all(map(_is_number, poly)):
                _fail(summary, f"{where} 'segmentation' must be a list of polygons [x1, y1, x2, "
                               f"y2, ...] (an even number of numbers each), got {_short(segm)}")
            if lvis and len(poly) < 6:  # Detectron2's LVIS loader asserts (COCO's drops them)
                _fail(summary, f"{where} has a polygon with fewer than 3 points, which "
                               f"Detectron2's LVIS loader rejects: {_short(poly)}")
        if lvis and not segm:
            _fail(summary, f"{where} has an empty 'segmentation' (LVIS loader needs a polygon)")
        return "polygon"
    if isinstance(segm, dict) and lvis:
        _fail(summary, f"{where} stores its mask as RLE; Detectron2's LVIS loader reads polygon "
                       "masks only (convert the masks to polygons, or the file to COCO format)")
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            _fail(summary, f"{where} RLE 'segmentation' needs 'counts' and 'size', got keys "
                           f"{sorted(segm)}")
        if list(segm["size"]) != [image["height"], image["width"]]:
            _fail(summary, f"{where} RLE 'segmentation' size {segm['size']} is not the image's "
                           f"[height, width] = [{image['height']}, {image['width']}]")
        return "rle"
    _fail(summary, f"{where} 'segmentation' must be a list of polygons or an RLE dict, got "
                   f"{_short(segm)}")


def _image_path(summary, image):
    if summary.format == "lvis":  # Detectron2's LVIS loader: image_root + split folder / file
        split_folder, file_name = image["coco_url"].split("/")[-2:]
        return os.path.join(summary.image_root + split_folder, file_name)
    return os.path.join(summary.image_root, image["file_name"])


def inspect_annotation_file(name: str, json_file: str, image_root: str,
                            num_image_samples: int = NUM_IMAGE_SAMPLES) -> DatasetSummary:
    """Read and check a COCO- or LVIS-format instance annotation file.

    Returns:
        a :class:`DatasetSummary`. Raises :class:`DatasetFileError` for a missing json / image
        folder / sampled image file and :class:`DatasetFormatError` for anything Detectron2
        could not load (the message names the dataset, the file, the entry and the value).
    """
    if not os.path.isfile(json_file):
        raise DatasetFileError(f"dataset '{name}': annotation file {os.path.abspath(json_file)} "
                               "does not exist")
    if not os.path.isdir(image_root):
        raise DatasetFileError(f"dataset '{name}': image folder {os.path.abspath(image_root)} "
                               "does not exist")
    summary = DatasetSummary(name=name, json_file=json_file, image_root=image_root, format="coco")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(summary, f"not valid json: {e}")
    if not isinstance(data, dict):
        _fail(summary, f"the top level must be a json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(summary, f"required key '{key}' is missing or not a list (got "
                           f"{_short(data.get(key))}; keys present: {sorted(data)})")
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    is_lvis = (any("frequency" in c for c in cats) or
               any("neg_category_ids" in im or "not_exhaustive_category_ids" in im
                   for im in images))
    if is_lvis:
        summary.format = "lvis"
        summary.image_root = os.path.join(image_root, "")  # LVIS paths are root + split folder

    cat_by_id = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            _fail(summary, f"categories[{i}] needs an integer 'id' and a 'name', got {_short(c)}")
        if c["id"] in cat_by_id:
            _fail(summary, f"category id {c['id']} appears twice in 'categories'")
        if is_lvis and c.get("frequency") not in ("r", "c", "f"):
            _fail(summary, f"LVIS-format categories[{i}] (id {c['id']}) needs 'frequency' "
                           f"'r', 'c' or 'f', got {_short(c.get('frequency'))}")
        cat_by_id[c["id"]] = c
    if not cat_by_id:
        _fail(summary, "'categories' is empty")
    summary.category_ids = sorted(cat_by_id)
    summary.category_names = [str(cat_by_id[i]["name"]) for i in summary.category_ids]
    if is_lvis and summary.category_ids != list(range(1, len(cat_by_id) + 1)):
        _fail(summary, "LVIS-format category ids must be 1..K (Detectron2's LVIS loader maps id "
                       f"k to class k-1); got {summary.category_ids[:10]}...")

    image_by_id = {}
    path_key = "coco_url" if is_lvis else "file_name"
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im:
            _fail(summary, f"images[{i}] has no 'id': {_short(im)}")
        for key in (path_key, "height", "width"):
            if key not in im:
                _fail(summary, f"image id {im['id']} (images[{i}]) has no '{key}'")
        if is_lvis:
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if not isinstance(im.get(key), list):
                    _fail(summary, f"LVIS-format image id {im['id']} needs the list '{key}' "
                                   "(LVIS evaluation reads it)")
        if im["id"] in image_by_id:
            _fail(summary, f"image id {im['id']} appears twice in 'images'")
        image_by_id[im["id"]] = im
    summary.num_images = len(image_by_id)

    ann_ids = set()
    for i, ann in enumerate(anns):
        where = f"annotation id {ann.get('id') if isinstance(ann, dict) else '?'} " \
                f"(annotations[{i}])"
        if not isinstance(ann, dict):
            _fail(summary, f"{where} is not an object")
        if ann.get("id") in ann_ids:
            _fail(summary, f"{where}: annotation ids must be unique")
        ann_ids.add(ann.get("id"))
        image = image_by_id.get(ann.get("image_id"))
        if image is None:
            _fail(summary, f"{where} refers to image_id {_short(ann.get('image_id'))}, which is "
                           "not in 'images'")
        if ann.get("category_id") not in cat_by_id:
            _fail(summary, f"{where} refers to category_id {_short(ann.get('category_id'))}, "
                           "which is not in 'categories'")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))
                and box[2] >= 0 and box[3] >= 0):
            _fail(summary, f"{where} 'bbox' must be [x, y, width, height] (4 finite numbers, "
                           f"width and height >= 0), got {_short(box)}")
        crowd = bool(ann.get("iscrowd", 0))
        if "segmentation" in ann:
            kind = _check_segmentation(summary, ann, image, where)
            summary.num_rle_masks += kind == "rle" and not crowd
        elif not crowd:
            summary.num_without_segmentation += 1
    summary.num_annotations = len(anns)

    if images:
        n = len(images)
        picks = sorted({round(k * (n - 1) / max(1, num_image_samples - 1))
                        for k in range(min(n, num_image_samples))})
        for k in picks:
            path = _image_path(summary, images[k])
            if not os.path.isfile(path):
                raise DatasetFileError(
                    f"dataset '{name}': image file {os.path.abspath(path)} (image id "
                    f"{images[k]['id']}) does not exist; '{path_key}' is read relative to the "
                    f"image folder {os.path.abspath(image_root)}")
    return summary


def register_user_dataset(summary: DatasetSummary) -> None:
    """Register a checked dataset in Detectron2's catalogs (replacing one of the same name).

    COCO format: Detectron2's `load_coco_json` (category ids of any values are mapped to
    contiguous classes in increasing id order); LVIS format: `load_lvis_json`. The metadata
    (``thing_classes``, the id mapping for COCO, ``json_file``, ``image_root``,
    ``evaluator_type``) is set now, so the demo and the evaluators know the classes without
    loading the dataset.
    """
    name = summary.name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    meta = {"thing_classes": list(summary.category_names), "json_file": summary.json_file,
            "image_root": summary.image_root, "evaluator_type": summary.format}
    if summary.format == "coco":
        meta["thing_dataset_id_to_contiguous_id"] = {
            cid: i for i, cid in enumerate(summary.category_ids)}
        DatasetCatalog.register(
            name, lambda: load_coco_json(summary.json_file, summary.image_root, name))
    else:  # dataset_name=None: the metadata is set here, not LVIS v0.5 / v1's builtin one
        DatasetCatalog.register(
            name, lambda: load_lvis_json(summary.json_file, summary.image_root, None))
    MetadataCatalog.get(name).set(**meta)


def register_from_args(dataset_args, summaries: Optional[Dict[str, DatasetSummary]] = None
                       ) -> Dict[str, DatasetSummary]:
    """Inspect (unless `summaries` already holds it) and register each ``(NAME, JSON,
    IMAGE_DIR)`` triple of the ``--dataset`` option; returns ``{name: summary}``."""
    summaries = dict(summaries or {})
    for name, json_file, image_root in dataset_args or []:
        if name not in summaries:
            summaries[name] = inspect_annotation_file(name, json_file, image_root)
        register_user_dataset(summaries[name])
    return summaries
