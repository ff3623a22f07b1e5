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
  ``coco_url`` (LVIS: Detectron2's LVIS loader takes the path from it), positive integer
  ``height`` and ``width``;
* annotations refer to an existing image and category, ``bbox`` is ``[x, y, w, h]`` of 4
  finite numbers with ``w, h >= 0``, ``segmentation`` (if given) is a list of polygons (even
  number of coordinates) or an RLE dict whose ``size`` is the image's ``[height, width]`` and
  whose ``counts`` decode to run lengths summing to ``height * width``
  (:func:`~rsloss_d2.data.file_checks.rle_counts_problem`);
* every image file: it exists, is an image, has the json's size after EXIF orientation, a pixel
  mode Detectron2 reads correctly, and is not cut short
  (:func:`~rsloss_d2.data.file_checks.image_file_problem`, in parallel processes);
* LVIS format (recognised by ``frequency`` in categories or ``neg_category_ids`` /
  ``not_exhaustive_category_ids`` in images): category ids are ``1..K`` (Detectron2 maps id
  ``k`` to class ``k - 1``), every category has ``frequency`` and every image both id lists
  (the LVIS evaluation's rare / common / frequent split and federated rules read them); masks
  are polygons of at least 3 points (Detectron2's LVIS loader asserts on anything else).

``"info"`` and ``"licenses"`` are optional (the evaluators fill them in, see
``rsloss_d2/evaluation/evaluators.py``). COCO format: an annotation whose polygons all have fewer
than 3 points, or whose ``segmentation`` is empty, is kept as a box-only instance (Detectron2's
COCO loader would drop the whole instance, box included); models with masks refuse such a
training set up front (:mod:`rsloss_d2.data.config_checks`).

A successful inspection is cached (:func:`cache_dir`), keyed by the json's path, size and
modification time and the image folder, so a second run skips reading the json and the images.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.structures import BoxMode

from .datasets import DatasetFileError
from .file_checks import check_image_files, invalid_rle_strings, rle_counts_problem

__all__ = [
    "DatasetFormatError",
    "DatasetSummary",
    "cache_dir",
    "inspect_annotation_file",
    "register_user_dataset",
]

logger = logging.getLogger(__name__)

# bumped whenever the checks change, so that older cache entries are not trusted
CHECK_VERSION = 2
# image problems listed in one error message
_MAX_LISTED = 5


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
    num_instances: int = 0  # non-crowd annotations (the objects a model trains on)
    num_rle_masks: int = 0  # non-crowd annotations whose mask is an RLE dict
    num_without_segmentation: int = 0  # non-crowd annotations without a mask (or an empty one)
    first_without_segmentation: str = ""  # "annotation id ... (annotations[i], image ...)"
    # COCO: non-crowd annotations whose polygons all have fewer than 3 points, kept box-only as
    # {"image_id", "bbox", "category_id"} (Detectron2's COCO loader drops them)
    box_only_annotations: List[dict] = field(default_factory=list)
    first_degenerate_polygon: str = ""
    # evaluation on a subset of the training categories (DATASETS.TEST_CATEGORY_SUBSET): the
    # training set's categories, which the model's classes are; empty: this set's own
    model_category_ids: List[int] = field(default_factory=list)
    model_category_names: List[str] = field(default_factory=list)

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    def __repr__(self):  # short: it is printed with the command-line arguments
        return (f"DatasetSummary({self.name!r}, {self.format}, {self.json_file!r}, "
                f"{self.num_categories} categories, {self.num_images} images, "
                f"{self.num_annotations} annotations, {self.num_rle_masks} RLE masks)")

    @property
    def num_degenerate_polygons(self) -> int:
        return len(self.box_only_annotations)


def _all_numbers(values) -> bool:
    """All entries finite numbers (one C-level sum instead of a check per coordinate)."""
    try:
        return math.isfinite(sum(values))
    except TypeError:
        return False


def _fail(summary, what):
    raise DatasetFormatError(f"dataset '{summary.name}' ({summary.json_file}): {what}")


def _short(value, limit=80):
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Where:
    """``annotation id N (annotations[i])``, built only when a message needs it."""

    __slots__ = ("index", "ann")

    def __init__(self, index, ann):
        self.index, self.ann = index, ann

    def __str__(self):
        ann_id = self.ann.get("id") if isinstance(self.ann, dict) else "?"
        return f"annotation id {ann_id} (annotations[{self.index}])"

    def __format__(self, spec):
        return format(str(self), spec)


def _check_segmentation(summary, ann, image, where, rle_strings):
    """The kind of mask of `ann`: "polygon", "rle", "empty" (no polygon / empty dict) or
    "degenerate" (COCO: polygons, all of fewer than 3 points); raises for a malformed one.
    Compressed RLE strings are appended to `rle_strings` as ``(where, counts, height, width)``
    and checked together afterwards."""
    segm = ann["segmentation"]
    lvis = summary.format == "lvis"
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2 or not _all_numbers(poly):
                _fail(summary, f"{where} 'segmentation' must be a list of polygons [x1, y1, x2, "
                               f"y2, ...] (an even number of numbers each), got {_short(segm)}")
            if lvis and len(poly) < 6:  # Detectron2's LVIS loader asserts (COCO's drops them)
                _fail(summary, f"{where} has a polygon with fewer than 3 points, which "
                               f"Detectron2's LVIS loader rejects: {_short(poly)}")
        if lvis and not segm:
            _fail(summary, f"{where} has an empty 'segmentation' (LVIS loader needs a polygon)")
        if not segm:
            return "empty"
        return "polygon" if any(len(poly) >= 6 for poly in segm) else "degenerate"
    if isinstance(segm, dict) and lvis:
        _fail(summary, f"{where} stores its mask as RLE; Detectron2's LVIS loader reads polygon "
                       "masks only (convert the masks to polygons, or the file to COCO format)")
    if isinstance(segm, dict):
        if not segm:  # Detectron2's COCO loader treats it as "no mask"
            return "empty"
        if "counts" not in segm or "size" not in segm:
            _fail(summary, f"{where} RLE 'segmentation' needs 'counts' and 'size', got keys "
                           f"{sorted(segm)}")
        if not isinstance(segm["size"], list) or \
                list(segm["size"]) != [image["height"], image["width"]]:
            _fail(summary, f"{where} RLE 'segmentation' size {_short(segm['size'])} is not the "
                           f"image's [height, width] = [{image['height']}, {image['width']}]")
        if isinstance(segm["counts"], str):
            rle_strings.append((where, segm["counts"], image["height"], image["width"]))
            return "rle"
        problem = rle_counts_problem(segm["counts"], image["height"], image["width"])
        if problem is not None:
            _fail(summary, f"{where}: {problem}")
        return "rle"
    _fail(summary, f"{where} 'segmentation' must be a list of polygons or an RLE dict, got "
                   f"{_short(segm)}")


def _image_path(summary, image):
    if summary.format == "lvis":  # Detectron2's LVIS loader: image_root + split folder / file
        split_folder, file_name = image["coco_url"].split("/")[-2:]
        return os.path.join(summary.image_root + split_folder, file_name)
    return os.path.join(summary.image_root, image["file_name"])


def cache_dir() -> str:
    """Where successful inspections are remembered: ``$RSLOSS_D2_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/rsloss_d2`` (default ``~/.cache/rsloss_d2``), sub-folder
    ``dataset_checks``."""
    root = os.environ.get("RSLOSS_D2_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "rsloss_d2")
    return os.path.join(root, "dataset_checks")


def _cache_key(json_file, image_root):
    st = os.stat(json_file)
    return {"version": CHECK_VERSION, "json_file": os.path.abspath(json_file),
            "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "image_root": os.path.abspath(image_root)}


def _cache_path(key):
    digest = hashlib.sha1(f"{key['json_file']}\0{key['image_root']}".encode()).hexdigest()
    return os.path.join(cache_dir(), digest[:20] + ".json")


def _cached_summary(name, json_file, image_root) -> Optional[DatasetSummary]:
    key = _cache_key(json_file, image_root)
    try:
        with open(_cache_path(key)) as f:
            entry = json.load(f)
        if entry.get("key") != key:
            return None
        summary = DatasetSummary(**entry["summary"])
    except (OSError, ValueError, TypeError):  # absent, unreadable or of another version
        return None
    summary.name, summary.json_file = name, json_file
    summary.image_root = os.path.join(image_root, "") if summary.format == "lvis" else image_root
    return summary


def _store_summary(summary, image_root):
    key = _cache_key(summary.json_file, image_root)
    path = _cache_path(key)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({"key": key, "summary": dataclasses.asdict(summary)}, f)
        os.replace(tmp, path)
    except OSError:  # a read-only home: no cache, the checks run again next time
        try:
            os.remove(tmp)
        except OSError:
            pass


def inspect_annotation_file(name: str, json_file: str, image_root: str, check_images: bool = True,
                            use_cache: bool = True, num_workers: Optional[int] = None
                            ) -> DatasetSummary:
    """Read and check a COCO- or LVIS-format instance annotation file and (`check_images`)
    every image file it names.

    Args:
        use_cache: return the remembered result of an earlier successful inspection of the
            same json (path, size, modification time) and image folder, and remember this one.
        num_workers: processes for the image checks (default: the usable CPUs).

    Returns:
        a :class:`DatasetSummary`. Raises :class:`DatasetFileError` for a missing json / image
        folder / image file and :class:`DatasetFormatError` for anything Detectron2 could not
        load or would read wrongly (the message names the dataset, the file, the entry and the
        value).
    """
    if not os.path.isfile(json_file):
        raise DatasetFileError(f"dataset '{name}': annotation file {os.path.abspath(json_file)} "
                               "does not exist")
    if not os.path.isdir(image_root):
        raise DatasetFileError(f"dataset '{name}': image folder {os.path.abspath(image_root)} "
                               "does not exist")
    if use_cache and check_images:
        cached = _cached_summary(name, json_file, image_root)
        if cached is not None:
            return cached
    summary, image_entries = _inspect_json(name, json_file, image_root)
    if check_images:
        _check_images(summary, image_entries, num_workers)
        if use_cache:
            _store_summary(summary, image_root)
    return summary


def _inspect_json(name, json_file, image_root):
    """The json checks of :func:`inspect_annotation_file`: ``(summary, image entries)``, the
    entries ``(index, path, height, width)`` of every image for :func:`_check_images`."""
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
        for key in ("height", "width"):
            if not (isinstance(im[key], int) and not isinstance(im[key], bool) and im[key] > 0):
                _fail(summary, f"image id {im['id']} (images[{i}]) '{key}' must be a positive "
                               f"integer, got {_short(im[key])}")
        if is_lvis:
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if not isinstance(im.get(key), list):
                    _fail(summary, f"LVIS-format image id {im['id']} needs the list '{key}' "
                                   "(LVIS evaluation reads it)")
        if im["id"] in image_by_id:
            _fail(summary, f"image id {im['id']} appears twice in 'images'")
        image_by_id[im["id"]] = im
    summary.num_images = len(image_by_id)

    ann_ids, rle_strings = set(), []
    for i, ann in enumerate(anns):
        where = _Where(i, ann)  # formatted only into an error message
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
        if not (isinstance(box, list) and len(box) == 4 and _all_numbers(box)
                and box[2] >= 0 and box[3] >= 0):
            _fail(summary, f"{where} 'bbox' must be [x, y, width, height] (4 finite numbers, "
                           f"width and height >= 0), got {_short(box)}")
        crowd = bool(ann.get("iscrowd", 0))
        kind = (_check_segmentation(summary, ann, image, where, rle_strings)
                if "segmentation" in ann else None)
        if crowd:
            continue
        summary.num_instances += 1
        summary.num_rle_masks += kind == "rle"
        if kind in (None, "empty"):
            summary.num_without_segmentation += 1
            if not summary.first_without_segmentation:
                summary.first_without_segmentation = f"{where} of image {_short(image[path_key])}"
        elif kind == "degenerate":
            summary.box_only_annotations.append(
                {"image_id": image["id"], "bbox": box, "category_id": ann["category_id"]})
            if not summary.first_degenerate_polygon:
                summary.first_degenerate_polygon = (
                    f"{where} of image {_short(image[path_key])}: {_short(ann['segmentation'])}")
    summary.num_annotations = len(anns)
    invalid = invalid_rle_strings([r[1] for r in rle_strings], [r[2] * r[3] for r in rle_strings])
    if invalid.size:
        where, counts, height, width = rle_strings[invalid[0]]
        _fail(summary, f"{where}: {rle_counts_problem(counts, height, width)}")
    entries = [(i, _image_path(summary, im), im["height"], im["width"])
               for i, im in enumerate(images)]
    return summary, (entries, [im["id"] for im in images])


def _check_images(summary, image_entries, num_workers=None):
    """Every image file of the json (:func:`~rsloss_d2.data.file_checks.image_file_problem`);
    raises naming the first problems and how many files have one."""
    entries, image_ids = image_entries
    problems = check_image_files(entries, num_workers)
    if not problems:
        return
    lines = []
    for index, problem in problems[:_MAX_LISTED]:
        _, path, _, _ = entries[index]
        lines.append(f"image file {os.path.abspath(path)} (image id {image_ids[index]}, "
                     f"images[{index}]) {problem}")
    more = len(problems) - len(lines)
    text = (f"dataset '{summary.name}' ({summary.json_file}): {len(problems)} of {len(entries)} "
            f"image files cannot be used: " + "; ".join(lines)
            + (f"; and {more} more" if more > 0 else "")
            + f" (file names are read relative to the image folder "
            f"{os.path.abspath(summary.image_root)})")
    missing = problems[0][1] == "does not exist"
    raise (DatasetFileError if missing else DatasetFormatError)(text)


def _load_coco(summary: DatasetSummary):
    """Detectron2's `load_coco_json`, plus the box-only instances it would drop (polygons of
    fewer than 3 points), with the categories mapped to the model's classes."""
    name = summary.name
    if summary.model_category_ids:  # a subset of the training categories: their classes
        id_map = {cid: i for i, cid in enumerate(summary.model_category_ids)}
        dicts = load_coco_json(summary.json_file, summary.image_root, None)
        for record in dicts:
            for obj in record["annotations"]:
                obj["category_id"] = id_map[obj["category_id"]]
    else:
        id_map = {cid: i for i, cid in enumerate(summary.category_ids)}
        dicts = load_coco_json(summary.json_file, summary.image_root, name)
    if summary.box_only_annotations:
        by_image = defaultdict(list)
        for ann in summary.box_only_annotations:
            by_image[ann["image_id"]].append(
                {"bbox": list(ann["bbox"]), "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0,
                 "category_id": id_map[ann["category_id"]]})
        for record in dicts:
            record["annotations"].extend(by_image.get(record["image_id"], []))
        logger.info(f"dataset '{name}': the {len(summary.box_only_annotations)} instances "
                    "without a polygon of 3 points (Detectron2's loader filtered them out) are "
                    "kept as box-only instances")
    return dicts


def _json_with_model_categories(summary: DatasetSummary) -> str:
    """A copy of the summary's json (in :func:`cache_dir`, made once per json version and
    category list) whose ``categories`` are the model's: the test set's own entries where it has
    them, ``{"id", "name"}`` for the others; images and annotations unchanged."""
    key = _cache_key(summary.json_file, summary.image_root)
    key["model_categories"] = list(zip(summary.model_category_ids, summary.model_category_names))
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir(), f"{digest}_model_categories.json")
    if os.path.isfile(path):
        return path
    with open(summary.json_file) as f:
        data = json.load(f)
    own = {c["id"]: c for c in data["categories"]}
    data["categories"] = [own.get(cid, {"id": cid, "name": name}) for cid, name in
                          zip(summary.model_category_ids, summary.model_category_names)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path


def register_user_dataset(summary: DatasetSummary) -> None:
    """Register a checked dataset in Detectron2's catalogs (replacing one of the same name).

    COCO format: Detectron2's `load_coco_json` (category ids of any values are mapped to
    contiguous classes in increasing id order), keeping box-only instances; LVIS format:
    `load_lvis_json`. The metadata (``thing_classes``, the id mapping for COCO, ``json_file``,
    ``image_root``, ``evaluator_type``, ``user_dataset=True``) is set now, so the demo and the
    evaluators know the classes without loading the dataset.

    A test set evaluated on a subset of the training categories (``model_category_ids`` set)
    gets the training set's classes and id mapping, and as ``json_file`` a copy of its json whose
    ``categories`` are all the model's (:func:`_json_with_model_categories`): the evaluators then
    map every predicted class to its id, and the categories absent from the test set have no
    ground truth (AP -1 in COCOeval, left out of the means).
    """
    name = summary.name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    ids, names = summary.category_ids, summary.category_names
    if summary.model_category_ids:
        ids, names = summary.model_category_ids, summary.model_category_names
    meta = {"thing_classes": list(names), "image_root": summary.image_root,
            "evaluator_type": summary.format, "user_dataset": True}
    meta["json_file"] = summary.json_file
    if summary.model_category_ids:
        meta["json_file"] = _json_with_model_categories(summary)
    if summary.format == "coco":
        meta["thing_dataset_id_to_contiguous_id"] = {cid: i for i, cid in enumerate(ids)}
        DatasetCatalog.register(name, lambda: _load_coco(summary))
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
