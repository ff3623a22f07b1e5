"""Detectron2 evaluators that report Optimal LRP beside AP (spec `olrp.md`; see `olrp.py` for
the definition and README.md in this folder for the summary).

`COCOOLRPEvaluator` / `LVISOLRPEvaluator` run Detectron2's `COCOEvaluator` / `LVISEvaluator`
unchanged (AP numbers and tables are exactly Detectron2's), then compute oLRP on the same
detections and add to each task's result dict (percentages, lower is better):

    "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"   area all (COCO maxDets 100 / LVIS 300 per image)
    "oLRP_s", "oLRP_m", "oLRP_l"               oLRP for small / medium / large objects
    "oLRP_r", "oLRP_c", "oLRP_f"               (LVIS only) oLRP over rare / common / frequent
    "oLRP-<class name>"                        (COCO only) per-class oLRP, like "AP-<name>"

and log a table in the style of Detectron2's AP table. With `save_thresholds`, the per-class
LRP-optimal score thresholds go to `<output_dir>/lrp_optimal_thresholds.json` (read it back with
`load_class_thresholds`). Only "bbox" and "segm" get oLRP (not "keypoints").
"""
import itertools
import json
import math
import os

from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from tabulate import tabulate

from .olrp import compute_olrp, compute_olrp_lvis

__all__ = ["COCOAPEvaluator", "COCOOLRPEvaluator", "LVISOLRPEvaluator", "THRESHOLDS_FILE"]

THRESHOLDS_FILE = "lrp_optimal_thresholds.json"
_SUMMARY_KEYS = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "oLRP_s", "oLRP_m", "oLRP_l")


class _OLRPMixin:
    """Shared part: copying the predictions, reporting, saving thresholds."""

    _extra_keys = ()

    def _setup_olrp(self, tau, save_thresholds):
        self._tau = float(tau)
        self._save_thresholds = bool(save_thresholds)

    @staticmethod
    def _copy_results(predictions):
        # the parent class maps category ids (and the LVIS / COCO APIs add keys) in place;
        # keep our own shallow copies of the result dicts
        return [dict(r) for r in itertools.chain(*[p.get("instances", []) for p in predictions])]

    def _contiguous_id(self, category_id):
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is not None:
            return mapping.get(category_id, -1)
        return category_id - self._unmapped_offset

    def _report(self, task, olrp):
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
        if not (self._save_thresholds and self._output_dir and self._thresholds):
            return
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, THRESHOLDS_FILE)
        payload = {"dataset": dataset_name, "tau": self._tau, **self._thresholds}
        with PathManager.open(path, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
        self._logger.info(f"Saved the LRP-optimal per-class score thresholds to {path}")


class COCOAPEvaluator(COCOEvaluator):
    """Detectron2's `COCOEvaluator` that also evaluates a valid COCO json without the optional
    "info" / "licenses" keys: the pinned pycocotools' `COCO.loadRes` copies
    ``dataset["info"]`` and fails with ``KeyError: 'info'`` after the whole inference otherwise
    (many exporters do not write it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._coco_api.dataset.setdefault("info", {})
        self._coco_api.dataset.setdefault("licenses", [])


class COCOOLRPEvaluator(_OLRPMixin, COCOAPEvaluator):
    """Detectron2's `COCOEvaluator` plus Optimal LRP (official LRP-Error COCO bookkeeping)."""

    _unmapped_offset = 0  # without a mapping Detectron2 uses the class index as COCO id
    _log_per_class = True

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, tau=0.5,
                 save_thresholds=True, **kwargs):
        """Arguments as `COCOEvaluator`, plus `tau` (IoU threshold of LRP) and
        `save_thresholds` (write `lrp_optimal_thresholds.json` into `output_dir`)."""
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._setup_olrp(tau, save_thresholds)
        self._dataset_name = dataset_name

    def _eval_predictions(self, predictions, img_ids=None):
        self._olrp_dets = self._copy_results(predictions)
        self._olrp_img_ids = img_ids
        self._olrp_mapped = False
        self._thresholds = {}
        super()._eval_predictions(predictions, img_ids=img_ids)
        self._write_thresholds(self._dataset_name)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        # called by the parent's _eval_predictions once per task, after its AP table
        res = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type not in ("bbox", "segm") or not hasattr(self, "_olrp_dets"):
            return res
        if not self._olrp_mapped:  # class ids were validated by the parent by now
            for r in self._olrp_dets:
                r["category_id"] = self._dataset_id(r["category_id"])
            self._olrp_mapped = True
        dets = self._olrp_dets
        if iou_type == "segm":  # as Detectron2: mask area, not box area, decides the range
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in dets]
        olrp = compute_olrp(self._coco_api, dets, iou_type=iou_type, tau=self._tau,
                            max_dets=self._max_dets_per_image[-1], img_ids=self._olrp_img_ids)
        res.update(self._report(iou_type, olrp))
        return res

    def _dataset_id(self, contiguous_id):
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            return contiguous_id
        if not hasattr(self, "_reverse_id"):
            self._reverse_id = {v: k for k, v in mapping.items()}
        return self._reverse_id[contiguous_id]


class LVISOLRPEvaluator(_OLRPMixin, LVISEvaluator):
    """Detectron2's `LVISEvaluator` plus Optimal LRP under LVIS's federated rules (official
    LRP-Error LVIS bookkeeping, see `compute_olrp_lvis`), with the rare / common / frequent
    split "oLRP_r" / "oLRP_c" / "oLRP_f"."""

    _extra_keys = ("oLRP_r", "oLRP_c", "oLRP_f")
    _unmapped_offset = 1  # Detectron2 maps LVIS ids 1..K to 0..K-1
    _log_per_class = False  # ~1200 classes: no per-class table / keys, the json has them

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, tau=0.5,
                 save_thresholds=True, **kwargs):
        """Arguments as `LVISEvaluator`, plus `tau` and `save_thresholds` (see
        `COCOOLRPEvaluator`)."""
        from .lvis_compat import patch_lvis_numpy

        patch_lvis_numpy()  # lvis 0.5.3's accumulate() uses np.float
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._setup_olrp(tau, save_thresholds)
        self._dataset_name = dataset_name

    def _eval_predictions(self, predictions):
        results = self._copy_results(predictions)
        super()._eval_predictions(predictions)
        if not self._do_evaluation:
            return
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        reverse = {v: k for k, v in mapping.items()} if mapping is not None else None
        for r in results:
            r["category_id"] = (reverse[r["category_id"]] if reverse is not None
                                else r["category_id"] + 1)
        self._thresholds = {}
        tasks = self._tasks or self._tasks_from_predictions(results)
        max_dets = self._max_dets_per_image if self._max_dets_per_image is not None else 300
        for task in sorted(t for t in tasks if t in ("bbox", "segm")):
            dets = results
            if task == "segm":
                dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            olrp = compute_olrp_lvis(self._lvis_api, dets, iou_type=task, tau=self._tau,
                                     max_dets=max_dets)
            self._results.setdefault(task, {}).update(self._report(task, olrp))
        self._write_thresholds(self._dataset_name)
