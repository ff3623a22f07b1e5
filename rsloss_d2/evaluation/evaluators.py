"""Detectron2 evaluators that report AP, Optimal LRP and ranking quality (see README.md in this
folder for the definitions).

`COCOOLRPEvaluator` / `LVISOLRPEvaluator` are Detectron2's `COCOEvaluator` / `LVISEvaluator`
(same inputs, same result json files, same AP keys and tables) whose AP comes by default from
rsloss_d2's vectorised evaluation (`evaluate.py`: equal to pycocotools / lvis-api, computed in
the same matching as the other numbers); `ap_impl="official"` runs pycocotools' `COCOeval` /
lvis-api's `LVISEval` instead. To each task's result dict they add

    "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"   Optimal LRP, percent, lower is better (area all;
    "oLRP_s", "oLRP_m", "oLRP_l"               COCO maxDets 100 / LVIS 300 per image) and by size
    "oLRP_r", "oLRP_c", "oLRP_f"               (LVIS only) over rare / common / frequent classes
    "oLRP-<class name>"                        (COCO only) per-class oLRP, like "AP-<name>"
    "spearman", "spearman_class_mean",         ranking quality of the true positives at IoU 0.5:
    "top10_iou", "mean_iou", "num_tp"          score-IoU rank correlation, higher is better

and log them as tables in the style of Detectron2's AP table. With `save_thresholds`, the
per-class LRP-optimal score thresholds go to `<output_dir>/lrp_optimal_thresholds.json` (read it
back with `load_class_thresholds`). Only "bbox" and "segm" get these (not "keypoints").
"""
import itertools
import json
import math
import os

import numpy as np
from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from .evaluate import evaluate_coco, evaluate_lvis

__all__ = ["COCOAPEvaluator", "COCOOLRPEvaluator", "LVISOLRPEvaluator", "THRESHOLDS_FILE",
           "AP_IMPLS"]

THRESHOLDS_FILE = "lrp_optimal_thresholds.json"
AP_IMPLS = ("vectorised", "official")
_SUMMARY_KEYS = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "oLRP_s", "oLRP_m", "oLRP_l")
_RANKING_KEYS = ("spearman", "spearman_class_mean", "top10_iou", "mean_iou", "num_tp")
_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_LVIS_AP_KEYS = _AP_KEYS + ("APr", "APc", "APf")


class _ExtrasMixin:
    """Shared part: options, reporting oLRP and ranking quality, saving thresholds."""

    _extra_keys = ()

    def _setup_extras(self, tau, save_thresholds, olrp, ranking_quality, ap_impl):
        if ap_impl not in AP_IMPLS:
            raise ValueError(f"ap_impl must be one of {AP_IMPLS}, got {ap_impl!r}")
        self._tau = float(tau)
        self._save_thresholds = bool(save_thresholds)
        self._olrp = bool(olrp)
        self._ranking_quality = bool(ranking_quality)
        self._ap_impl = ap_impl
        self._thresholds = {}

    def _contiguous_id(self, category_id):
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is not None:
            return mapping.get(category_id, -1)
        return category_id - self._unmapped_offset

    def _task_results(self, results, task):
        """Shallow copies of the result dicts (the APIs add keys in place); masks without
        "bbox", as Detectron2 evaluates them (the mask area decides the area range)."""
        if task == "segm":
            return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        return [dict(r) for r in results]

    def _report_extras(self, task, ev):
        res = {}
        if self._olrp:
            res.update(self._report_olrp(task, ev["olrp"]))
        if self._ranking_quality:
            rq = {k: ev["ranking"][k] for k in _RANKING_KEYS}
            self._logger.info(
                f"Ranking quality for {task} (score vs IoU of the true positives at IoU 0.5, "
                "higher is better): \n" + create_small_table(rq))
            res.update(rq)
        return res

    def _report_olrp(self, task, olrp):
        """Result-dict entries for `task`, logged as a table; remembers the thresholds."""
        res = {k: olrp[k] for k in _SUMMARY_KEYS + self._extra_keys}
        self._logger.info(
            f"Optimal LRP for {task} (tau={self._tau:.2f}, lower is better): \n"
            + create_small_table(res))
        names = self._metadata.get("thing_classes")
        rows = []
        for cid, pc in sorted(olrp["per_class"].items()):
            cont = self._contiguous_id(cid)
            name = names[cont] if names is not None and 0 <= cont < len(names) else str(cid)
            rows.append({"category_id": cid, "contiguous_id": cont, "name": name,
                         **{k: None if math.isnan(pc[k]) else pc[k]
                            for k in ("threshold", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")}})
        if self._log_per_class and names is not None and len(names) > 1:
            res.update({"oLRP-" + r["name"]: r["oLRP"] for r in rows})
            table = tabulate(
                [(r["name"], r["oLRP"], r["threshold"]) for r in rows], tablefmt="pipe",
                floatfmt=".3f", headers=["category", "oLRP", "LRP-optimal thr"],
                numalign="left", missingval="nan")
            self._logger.info(f"Per-category {task} oLRP: \n" + table)
        self._thresholds[task] = rows
        return res

    def _write_thresholds(self, dataset_name):
        if not (self._olrp and self._save_thresholds and self._output_dir and self._thresholds):
            return
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, THRESHOLDS_FILE)
        payload = {"dataset": dataset_name, "tau": self._tau, **self._thresholds}
        with PathManager.open(path, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
        self._logger.info(f"Saved the LRP-optimal per-class score thresholds to {path}")

    def _save_results(self, results, file_name):
        if self._output_dir:
            file_path = os.path.join(self._output_dir, file_name)
            self._logger.info("Saving results to {}".format(file_path))
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(results))
                f.flush()


class _SummarizedCOCOeval:
    """What Detectron2's `COCOEvaluator._derive_coco_results` reads from a summarized
    `COCOeval` (`stats`, `eval["precision"]` with its maxDets axis), from `evaluate_coco`."""

    def __init__(self, ap, precision):
        self.stats = np.array([ap[k] for k in _AP_KEYS])
        self.eval = {"precision": precision[..., None]}


class COCOAPEvaluator(COCOEvaluator):
    """Detectron2's `COCOEvaluator` that also evaluates a valid COCO json without the optional
    "info" / "licenses" keys: the pinned pycocotools' `COCO.loadRes` copies
    ``dataset["info"]`` and fails with ``KeyError: 'info'`` after the whole inference otherwise
    (many exporters do not write it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._coco_api.dataset.setdefault("info", {})
        self._coco_api.dataset.setdefault("licenses", [])


class COCOOLRPEvaluator(_ExtrasMixin, COCOAPEvaluator):
    """Detectron2's `COCOEvaluator` with vectorised AP, plus Optimal LRP (official LRP-Error COCO
    bookkeeping) and ranking quality."""

    _unmapped_offset = 0  # without a mapping Detectron2 uses the class index as COCO id
    _log_per_class = True

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, tau=0.5,
                 save_thresholds=True, olrp=True, ranking_quality=True, ap_impl="vectorised",
                 **kwargs):
        """Arguments as `COCOEvaluator`, plus `tau` (IoU threshold of LRP), `save_thresholds`
        (write `lrp_optimal_thresholds.json` into `output_dir`), `olrp` / `ranking_quality`
        (report them) and `ap_impl` ("vectorised" or "official": pycocotools' COCOeval).
        Detectron2's `use_fast_impl` (its compiled COCOeval_opt) is not used."""
        kwargs.setdefault("use_fast_impl", False)  # no "falling back" notice: AP is ap_impl's
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._setup_extras(tau, save_thresholds, olrp, ranking_quality, ap_impl)
        self._dataset_name = dataset_name

    def _eval_predictions(self, predictions, img_ids=None):
        """Detectron2's `COCOEvaluator._eval_predictions` (same json, same AP keys and tables),
        with AP, oLRP and ranking quality from one vectorised evaluation per task."""
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is not None:
            num_classes = len(mapping)
            assert min(mapping.values()) == 0 and max(mapping.values()) == num_classes - 1
            reverse = {v: k for k, v in mapping.items()}
            for result in coco_results:
                category_id = result["category_id"]
                assert category_id < num_classes, (
                    f"A prediction has class={category_id}, but the dataset only has "
                    f"{num_classes} classes and predicted class id should be in "
                    f"[0, {num_classes - 1}].")
                result["category_id"] = reverse[category_id]
        self._save_results(coco_results, "coco_instances_results.json")
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._thresholds = {}
        class_names = self._metadata.get("thing_classes")
        for task in sorted(tasks):
            assert task in {"bbox", "segm", "keypoints"}, f"Got unknown task: {task}!"
            if task == "keypoints":
                coco_eval = (_evaluate_predictions_on_coco(
                    self._coco_api, coco_results, task, kpt_oks_sigmas=self._kpt_oks_sigmas,
                    cocoeval_fn=COCOeval, img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image) if coco_results else None)
                self._results[task] = self._derive_coco_results(coco_eval, task, class_names)
                continue
            results = self._task_results(coco_results, task)
            vectorised = self._ap_impl == "vectorised"
            ev = None
            if vectorised or self._olrp or self._ranking_quality:
                ev = evaluate_coco(self._coco_api, results, task, img_ids=img_ids,
                                   max_dets=self._max_dets_per_image[-1], tau=self._tau,
                                   ap=vectorised, olrp=self._olrp,
                                   ranking=self._ranking_quality)
            if not coco_results:  # Detectron2: no AP without predictions
                coco_eval = None
            elif vectorised:
                coco_eval = _SummarizedCOCOeval(ev["ap"], ev["precision"])
            else:
                coco_eval = _evaluate_predictions_on_coco(
                    self._coco_api, self._task_results(coco_results, task), task,
                    cocoeval_fn=COCOeval, img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image)
            res = self._derive_coco_results(coco_eval, task, class_names=class_names)
            if ev is not None:
                res.update(self._report_extras(task, ev))
            self._results[task] = res
        self._write_thresholds(self._dataset_name)


class LVISOLRPEvaluator(_ExtrasMixin, LVISEvaluator):
    """Detectron2's `LVISEvaluator` with vectorised AP, plus Optimal LRP under LVIS's federated
    rules (official LRP-Error LVIS bookkeeping, with the rare / common / frequent split "oLRP_r"
    / "oLRP_c" / "oLRP_f") and ranking quality."""

    _extra_keys = ("oLRP_r", "oLRP_c", "oLRP_f")
    _unmapped_offset = 1  # Detectron2 maps LVIS ids 1..K to 0..K-1
    _log_per_class = False  # ~1200 classes: no per-class table / keys, the json has them

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, tau=0.5,
                 save_thresholds=True, olrp=True, ranking_quality=True, ap_impl="vectorised",
                 **kwargs):
        """Arguments as `LVISEvaluator`, plus those of `COCOOLRPEvaluator` ("official":
        lvis-api's LVISEval)."""
        from .lvis_compat import patch_lvis_numpy

        patch_lvis_numpy()  # lvis 0.5.3's accumulate() uses np.float
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._setup_extras(tau, save_thresholds, olrp, ranking_quality, ap_impl)
        self._dataset_name = dataset_name

    def _eval_predictions(self, predictions):
        """Detectron2's `LVISEvaluator._eval_predictions` (same json, same AP keys), with AP,
        oLRP and ranking quality from one vectorised evaluation per task."""
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is not None:  # an LVIS evaluation of COCO-style categories
            reverse = {v: k for k, v in mapping.items()}
            for result in lvis_results:
                result["category_id"] = reverse[result["category_id"]]
        else:  # LVIS ids 1..K from Detectron2's 0..K-1
            for result in lvis_results:
                result["category_id"] += 1
        self._save_results(lvis_results, "lvis_instances_results.json")
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._thresholds = {}
        max_dets = self._max_dets_per_image if self._max_dets_per_image is not None else 300
        for task in sorted(tasks):
            results = self._task_results(lvis_results, task)
            vectorised = self._ap_impl == "vectorised"
            ev = None
            if vectorised or self._olrp or self._ranking_quality:
                ev = evaluate_lvis(self._lvis_api, results, task, max_dets=max_dets,
                                   tau=self._tau, ap=vectorised, olrp=self._olrp,
                                   ranking=self._ranking_quality)
            if not lvis_results:  # Detectron2: no AP without predictions
                self._logger.warning("No predictions from the model!")
                res = {k: float("nan") for k in _LVIS_AP_KEYS}
            elif vectorised:
                res = {k: float(ev["ap"][k] * 100) for k in _LVIS_AP_KEYS}
                self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            else:
                res = _evaluate_predictions_on_lvis(
                    self._lvis_api, self._task_results(lvis_results, task), task,
                    max_dets_per_image=max_dets, class_names=self._metadata.get("thing_classes"))
            if ev is not None:
                res.update(self._report_extras(task, ev))
            self._results[task] = res
        self._write_thresholds(self._dataset_name)
