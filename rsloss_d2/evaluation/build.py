"""Evaluator selection from the dataset's metadata (interim version: plain Detectron2 evaluators;
the oLRP evaluators replace these when cfg.TEST.OLRP.ENABLED)."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, LVISEvaluator


def build_evaluator(cfg, dataset_name, output_folder=None):
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    raise NotImplementedError(f"no evaluator for dataset '{dataset_name}' of type '{evaluator_type}'")
