"""Evaluation: COCO / LVIS evaluators with Optimal LRP."""
from .lvis_compat import patch_lvis_numpy

patch_lvis_numpy()
