"""Evaluation: COCO / LVIS evaluators with Optimal LRP (oLRP) beside AP.

- `compute_olrp`, `compute_olrp_lvis`, `lrp_curves`: oLRP of COCO-format / LVIS-format
  detections, equal to the official LRP-Error evaluation (vectorised NumPy).
- `COCOOLRPEvaluator`, `LVISOLRPEvaluator`: Detectron2 evaluators adding oLRP to AP;
  `COCOAPEvaluator`: Detectron2's COCO evaluator accepting a json without "info" / "licenses".
- `build_evaluator(cfg, dataset_name, output_folder)`: the evaluator `tools/train_net.py` uses.
- `load_class_thresholds`, `filter_by_class_thresholds`: LRP-optimal per-class score thresholds
  for the demo / inference path.
"""
from .lvis_compat import patch_lvis_numpy

patch_lvis_numpy()

from .build import build_evaluator  # noqa: E402
from .evaluators import COCOAPEvaluator, COCOOLRPEvaluator, LVISOLRPEvaluator  # noqa: E402
from .olrp import compute_olrp, compute_olrp_lvis, lrp_curves  # noqa: E402
from .thresholds import filter_by_class_thresholds, load_class_thresholds  # noqa: E402

__all__ = [
    "compute_olrp", "compute_olrp_lvis", "lrp_curves", "COCOAPEvaluator", "COCOOLRPEvaluator",
    "LVISOLRPEvaluator", "build_evaluator", "load_class_thresholds",
    "filter_by_class_thresholds", "patch_lvis_numpy",
]
