"""Registration of the synthetic datasets in Detectron2's catalogs, and dataset checks.

``shapes_train`` / ``shapes_val`` (COCO format, ``evaluator_type="coco"``) and
``shapes_lt_train`` / ``shapes_lt_val`` (LVIS format, ``evaluator_type="lvis"``) live under
``$DETECTRON2_DATASETS`` (default ``datasets/``, like Detectron2's builtin datasets) and are
generated on first use if their files are missing. Real COCO 2017 / LVIS use Detectron2's
builtin registrations (``coco_2017_train``, ``lvis_v1_train``, ...); `check_dataset_files`
turns a missing file into a clear error naming it.
"""
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json

# one direction: the registry uses the generator; the generator knows nothing of the registry
from .synthetic import (
    DEFAULT_SIZES,
    SHAPES_CATEGORIES,
    SHAPES_LT_CATEGORIES,
    datasets_root,
    generate_all,
)

__all__ = [
    "DEFAULT_SIZES",
    "SYNTHETIC_DATASETS",
    "datasets_root",
    "register_shapes_datasets",
    "check_dataset_files",
    "DatasetFileError",
]

logger = logging.getLogger(__name__)

# name -> (family, split, json path relative to the root, image dir relative to the root)
SYNTHETIC_DATASETS = {
    "shapes_train": ("shapes", "train", "shapes/annotations/instances_train.json", "shapes/train"),
    "shapes_val": ("shapes", "val", "shapes/annotations/instances_val.json", "shapes/val"),
    "shapes_lt_train": ("shapes_lt", "train", "shapes_lt/annotations/lvis_train.json", "shapes_lt/"),
    "shapes_lt_val": ("shapes_lt", "val", "shapes_lt/annotations/lvis_val.json", "shapes_lt/"),
}


class DatasetFileError(FileNotFoundError):
    """A dataset's annotation file or image folder is missing or unreadable."""


def _ensure_generated(root, family):
    """Generate `family` ("shapes" or "shapes_lt") under `root` if any of its files is missing."""
    needed = [os.path.join(root, v[2]) for v in SYNTHETIC_DATASETS.values() if v[0] == family]
    if all(os.path.isfile(p) for p in needed):
        return
    logger.info(f"Generating the synthetic '{family}' dataset under {root} (first use) ...")
    generate_all(root, which=(family,), **DEFAULT_SIZES)


def _read_json_checked(path, name):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFileError(
            f"Annotation file of dataset '{name}' is corrupt (not valid json): {path}: {e}. "
            f"Delete it to have it regenerated, or run `python -m rsloss_d2.data.synthetic`."
        ) from e


def _load(name, root):
    family, split, rel_json, rel_img = SYNTHETIC_DATASETS[name]
    _ensure_generated(root, family)
    json_file, image_root = os.path.join(root, rel_json), os.path.join(root, rel_img)
    _read_json_checked(json_file, name)
    if family == "shapes":
        return load_coco_json(json_file, image_root, name)
    # dataset_name=None: the metadata is ours (set at registration), not LVIS v0.5/v1's builtin
    return load_lvis_json(json_file, image_root, None)


def register_shapes_datasets(root=None):
    """Register (or re-register under a new root) the four synthetic datasets."""
    root = root or datasets_root()
    for name, (family, split, rel_json, rel_img) in SYNTHETIC_DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda name=name, root=root: _load(name, root))
        cats = SHAPES_CATEGORIES if family == "shapes" else SHAPES_LT_CATEGORIES
        meta = {
            "thing_classes": [c["name"] for c in cats],
            "thing_colors": [tuple(int(v) for v in c["color"][::-1]) for c in cats],  # RGB
            "json_file": os.path.join(root, rel_json),
            "image_root": os.path.join(root, rel_img),
            "evaluator_type": "coco" if family == "shapes" else "lvis",
            "synthetic_root": root,
        }
        if family == "shapes":
            meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(cats)}
        MetadataCatalog.get(name).set(**meta)


def check_dataset_files(dataset_names):
    """Raise `DatasetFileError` naming the missing file if a (non-synthetic) dataset is absent.

    Synthetic datasets are generated when missing, so they always pass. Datasets registered
    without ``json_file`` / ``image_root`` metadata are not checked.
    """
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"Dataset '{name}' is not registered. Registered datasets include: "
                f"{', '.join(sorted(n for n in DatasetCatalog.list() if 'shapes' in n or 'coco_2017' in n or 'lvis_v1' in n))} ..."
            )
        if name in SYNTHETIC_DATASETS:
            continue
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file", None)
        image_root = meta.get("image_root", None)
        for kind, path, test in (("annotation file", json_file, os.path.isfile),
                                 ("image folder", image_root, os.path.isdir)):
            if path is not None and not test(path):
                raise DatasetFileError(
                    f"Dataset '{name}' needs its {kind} {os.path.abspath(path)}, which does not "
                    f"exist. Set $DETECTRON2_DATASETS (now: '{datasets_root()}') to the folder that "
                    f"holds the datasets; the expected layout is in datasets/README.md."
                )
