"""Evaluator selection for `tools/train_net.py`: COCO or LVIS from the dataset's metadata, with
AP, Optimal LRP and ranking quality as the config's `TEST.OLRP`, `TEST.RANKING_QUALITY` and
`TEST.AP_IMPL` say (Detectron2's plain evaluators for a config without rsloss_d2's keys)."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import LVISEvaluator

from .evaluators import COCOAPEvaluator, COCOOLRPEvaluator, LVISOLRPEvaluator
from .lvis_compat import patch_lvis_numpy

__all__ = ["build_evaluator", "format_baseline_comparison"]


def build_evaluator(cfg, dataset_name, output_folder=None):
    """Evaluator for `dataset_name` from `MetadataCatalog.get(dataset_name).evaluator_type`.

    Args:
        cfg: a config with the rsloss_d2 keys (`cfg.TEST.OLRP.ENABLED / TAU / SAVE_THRESHOLDS`,
            `cfg.TEST.RANKING_QUALITY.ENABLED`, `cfg.TEST.AP_IMPL`; a config without them gets
            Detectron2's plain evaluators).
        dataset_name: a registered dataset whose `evaluator_type` is "coco" or "lvis".
        output_folder: where results (and `lrp_optimal_thresholds.json`) go; default
            `cfg.OUTPUT_DIR/inference/<dataset_name>`.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    olrp = cfg.TEST.get("OLRP")
    kwargs = None
    if olrp is not None:
        rq = cfg.TEST.get("RANKING_QUALITY")
        kwargs = {"tau": olrp.TAU, "save_thresholds": olrp.SAVE_THRESHOLDS,
                  "olrp": olrp.ENABLED, "ranking_quality": rq is not None and rq.ENABLED,
                  "ap_impl": cfg.TEST.get("AP_IMPL", "vectorised")}
    if evaluator_type == "coco":
        if kwargs is None:
            return COCOAPEvaluator(dataset_name, output_dir=output_folder)
        return COCOOLRPEvaluator(dataset_name, output_dir=output_folder, **kwargs)
    if evaluator_type == "lvis":
        patch_lvis_numpy()  # Detectron2's LVISEvaluator runs lvis 0.5.3, which uses np.float
        if kwargs is None:
            return LVISEvaluator(dataset_name, output_dir=output_folder)
        return LVISOLRPEvaluator(dataset_name, output_dir=output_folder, **kwargs)
    raise NotImplementedError(
        f"no evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}' "
        "(expected 'coco' or 'lvis')")


def format_baseline_comparison(cfg, results):
    """A small table of this run's results beside `cfg.TEST.BASELINE_RESULTS` (a reference
    model's numbers on `cfg.TEST.BASELINE_DATASET`, e.g. from configs/shapes/README.md), or None
    if the config names none or that dataset was not evaluated (e.g. training on other data).

    Args:
        results: Detectron2's evaluation results, ``{dataset: {task: {metric: value}}}``.
    Returns:
        str, one line per metric: ``metric  this run  baseline``.
    """
    spec = cfg.TEST.get("BASELINE_RESULTS", "")
    results = (results or {}).get(cfg.TEST.get("BASELINE_DATASET", ""))
    if not spec or not results:
        return None
    if any(MetadataCatalog.get(n).get("user_dataset", False) for n in cfg.DATASETS.TRAIN):
        return None  # trained on own (--dataset) data: the baseline's numbers do not apply
    name = cfg.TEST.BASELINE_NAME or "baseline"
    width = max(len(name), 9)
    lines = [f"{'metric':<12} {'this run':>9}  {name:>{width}}"]
    for item in spec.split(","):
        key, value = (p.strip() for p in item.split("="))
        task, metric = key.split("/")
        ours = results.get(task, {}).get(metric, float("nan"))
        lines.append(f"{key:<12} {ours:>9.1f}  {float(value):>{width}.1f}")
    return (f"Comparison with the baseline on {cfg.TEST.BASELINE_DATASET} (same data, backbone "
            f"and schedule if this config ran unchanged):\n" + "\n".join(lines))
