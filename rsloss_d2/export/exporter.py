"""Export a built model to TorchScript (tracing / scripting) or ONNX, as Detectron2's
``tools/deploy/export_model.py`` does, for every rsloss_d2 family.

Files written in the output folder (Detectron2's layout): ``model.ts`` plus the IR dumps
``model_ts_code.txt``, ``model_ts_IR.txt``, ``model_ts_IR_inlined.txt``, ``model.txt``
(TorchScript), or ``model.onnx`` (ONNX). Each file is first written to a temporary file in the
same folder and renamed, so a failed export never leaves a half-written model.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from typing import Tuple

import torch
from detectron2.export import TracingAdapter, dump_torchscript_IR

from .families import family_of, inference_function, output_names

__all__ = ["ExportError", "ONNX_OPSET", "build_adapter", "export_model", "check_exportable"]

logger = logging.getLogger(__name__)

# RoIAlign with aligned=True (Detectron2's ROIAlignV2) needs opset 16 (torchvision's symbolic)
ONNX_OPSET = 17

FORMATS = ("torchscript", "onnx")
METHODS = ("tracing", "scripting")

# parts a trace handles but TorchScript's compiler does not (Python-only code: Instances with
# custom fields, closures, dataclass configs, dict caches); `None`: the whole meta-architecture
_NOT_SCRIPTABLE = {
    "dense": "RankingRetinaNet's inference (Instances and Boxes built in Python)",
    "yolact": "YOLACT's inference (per-image Python loop and anchor cache)",
    "solov2": ("SOLOv2's inference (SOLO, Decoupled SOLO, SOLOv2: closures building the masks "
               "of the selected cells)"),
}


class ExportError(RuntimeError):
    """A model that cannot be exported with the requested format / method (says which part, and
    which method works)."""


def build_adapter(model, image: torch.Tensor) -> TracingAdapter:
    """Detectron2's ``TracingAdapter`` over the family's inference function: ``adapter(image)``
    returns the tuple of :func:`~rsloss_d2.export.families.output_names`."""
    # eval(): a new Module is in training mode, and torch.onnx.export restores the mode it found
    # on the whole tree (the model's included) after exporting
    return TracingAdapter(model, (image,), inference_func=inference_function(model)).eval()


def check_exportable(model, fmt: str, method: str) -> None:
    """Raise :class:`ExportError` for a format / method pair the model does not support."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: rsloss_d2 exports {FORMATS} (caffe2 is not "
                          "supported; use --format torchscript or onnx)")
    if method not in METHODS:
        raise ExportError(f"--export-method {method!r}: rsloss_d2 exports by {METHODS} "
                          "(caffe2_tracing is not supported; use --export-method tracing)")
    if fmt == "onnx" and method != "tracing":
        raise ExportError("ONNX is exported from a trace: use --export-method tracing with "
                          "--format onnx")
    if model.training:
        raise ExportError("the model is in training mode: call model.eval() before exporting")
    family = family_of(model)
    if method == "scripting" and family in _NOT_SCRIPTABLE:
        raise ExportError(f"{type(model).__name__} cannot be exported with --export-method "
                          f"scripting: {_NOT_SCRIPTABLE[family]} is not TorchScript-compilable; "
                          "use --export-method tracing (TorchScript or ONNX)")


@contextlib.contextmanager
def _atomic_path(path: str):
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` only on success."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sample_check(adapter, image) -> Tuple[torch.Tensor, ...]:
    outputs = adapter(image)
    if outputs[0].shape[0] == 0:
        raise ExportError(
            "the sample image gives no detection: a trace records the path the sample takes, and "
            "the NMS / mask steps would be traced on empty tensors. Pass a --sample-image with "
            "objects (or a lower test score threshold)")
    return outputs


def _trace(adapter, image):
    _sample_check(adapter, image)
    # new shapes must not trigger re-specialisation of the graph (Detectron2's tool sets the
    # bailout depth to 1, which is this fusion strategy)
    torch.jit.set_fusion_strategy([("STATIC", 1)])
    with warnings.catch_warnings():  # the frozen Python values are the ones documented
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(adapter, (image,), check_trace=False)


def _script(model):
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor,
              "pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor,
              "pred_masks": torch.Tensor}
    try:
        return scripting_with_instances(_ScriptableRCNN(model).eval(), fields)
    except Exception as e:  # the TorchScript compiler's error names the unsupported code
        part = _unscriptable_part(model, e)
        raise ExportError(f"{type(model).__name__} cannot be exported with --export-method "
                          f"scripting: {part} is not TorchScript-compilable; use --export-method "
                          "tracing (TorchScript or ONNX)") from e


class _ScriptableRCNN(torch.nn.Module):
    """Detectron2's ``ScriptableAdapter`` for one image: (3, H, W) → ``{"pred_boxes",
    "scores", "pred_classes"[, "pred_masks"]}`` (the fields of the Instances, as Detectron2's
    scripted models return them)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return inst.get_fields()


def _unscriptable_part(model, error: Exception) -> str:
    """The class the TorchScript compiler stopped in (its error names the compiled method as
    ``__torch__.<module>.<Class> self``; the innermost frame is the last), else the model."""
    found = re.findall(r"__torch__\.([\w.]+)\.(\w+) self", str(error))
    if found:
        module, cls = found[-1]
        return f"{cls} ({module})"
    return f"{type(model).__name__}.inference"


def export_model(model, image: torch.Tensor, output_dir: str, fmt: str = "torchscript",
                 method: str = "tracing", opset: int = ONNX_OPSET) -> str:
    """Export ``model`` (eval mode) traced / scripted on ``image`` into ``output_dir``.

    Args:
        model: a built rsloss_d2 / Detectron2 model of a supported family, weights loaded.
        image: (3, H, W) float32 sample (raw pixels, resized as at test time).
        fmt: ``"torchscript"`` or ``"onnx"``. method: ``"tracing"`` or ``"scripting"``
            (scripting: R-CNN family, TorchScript only).
    Returns:
        the path of ``model.ts`` / ``model.onnx``.
    """
    check_exportable(model, fmt, method)
    names = output_names(model)
    os.makedirs(output_dir, exist_ok=True)
    if method == "scripting":
        ts_model = _script(model)
        return _save_torchscript(ts_model, output_dir)
    adapter = build_adapter(model, image)
    if fmt == "torchscript":
        traced = _trace(adapter, image)
        logger.info(f"outputs (in order): {names}")
        return _save_torchscript(traced, output_dir)
    return _export_onnx(adapter, image, output_dir, names, opset)


def _save_torchscript(ts_model, output_dir):
    path = os.path.join(output_dir, "model.ts")
    with _atomic_path(path) as tmp:
        ts_model.save(tmp)
    dump_torchscript_IR(ts_model, output_dir)
    return path


def _export_onnx(adapter, image, output_dir, names, opset):
    _sample_check(adapter, image)
    path = os.path.join(output_dir, "model.onnx")
    dynamic_axes = {"image": {1: "height", 2: "width"}}
    for n in names:
        dynamic_axes[n] = {0: "detections"}
        if n == "masks":
            dynamic_axes[n].update({1: "height", 2: "width"})
    with _atomic_path(path) as tmp:
        # the TorchScript-based exporter (tracing, as Detectron2's tool); torchvision registers
        # its NMS / RoIAlign symbolics for it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(adapter, (image,), tmp, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=list(names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    return path
