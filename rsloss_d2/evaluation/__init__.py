"""Evaluation: COCO / LVIS evaluators with AP, Optimal LRP (oLRP) and ranking quality.

- `compute_coco_ap`, `compute_lvis_ap`: AP equal to pycocotools / lvis-api (vectorised NumPy).
- `ranking_quality`, `ranking_quality_lvis`: Spearman's correlation of score and IoU over the
  true positives; `true_positives`: those (score, IoU) pairs.
- `compute_olrp`, `compute_olrp_lvis`, `lrp_curves`: oLRP of COCO-format / LVIS-format
  detections, equal to the official LRP-Error evaluation.
- `evaluate_coco`, `evaluate_lvis`: all of the above from one matching.
- `COCOOLRPEvaluator`, `LVISOLRPEvaluator`: Detectron2 evaluators reporting all three;
  `COCOAPEvaluator`: Detectron2's COCO evaluator accepting a json without "info" / "licenses".
- `build_evaluator(cfg, dataset_name, output_folder)`: the evaluator `tools/train_net.py` uses.
- `load_class_thresholds`, `filter_by_class_thresholds`: LRP-optimal per-class score thresholds
  for the demo / inference path.
"""
from .lvis_compat import patch_lvis_numpy

patch_lvis_numpy()

from .build import build_evaluator  # noqa: E402
from .evaluate import (  # noqa: E402
    compute_coco_ap, compute_lvis_ap, evaluate_coco, evaluate_lvis, ranking_quality,
    ranking_quality_lvis, true_positives)
from .evaluators import COCOAPEvaluator, COCOOLRPEvaluator, LVISOLRPEvaluator  # noqa: E402
from .olrp import compute_olrp, compute_olrp_lvis, lrp_curves  # noqa: E402
from .thresholds import filter_by_class_thresholds, load_class_thresholds  # noqa: E402

__all__ = [
    "compute_coco_ap", "compute_lvis_ap", "ranking_quality", "ranking_quality_lvis",
    "true_positives", "evaluate_coco", "evaluate_lvis", "compute_olrp", "compute_olrp_lvis",
    "lrp_curves", "COCOAPEvaluator", "COCOOLRPEvaluator", "LVISOLRPEvaluator",
    "build_evaluator", "load_class_thresholds", "filter_by_class_thresholds",
    "patch_lvis_numpy",
]
