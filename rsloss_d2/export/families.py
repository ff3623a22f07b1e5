"""Per-family inference functions for export: one image tensor in, a fixed tuple of tensors out.

Each function takes ``(model, image)`` with ``image`` a (3, H, W) float32 tensor of raw pixels in
``cfg.INPUT.FORMAT`` order, already resized as the test loader would (not normalised, not
padded: the model normalises and pads inside the graph), and returns the tensors of
:data:`OUTPUT_NAMES` of its family in that order. They are the ``inference_func`` of
Detectron2's ``TracingAdapter`` (``detectron2/export/flatten.py``), which flattens the tuple as
it is. Every family reads image sizes from the input tensor's shape, so a trace is valid for any
(H, W), not only the sample's (Detectron2's ``shapes_to_tensor`` idiom, used by
``ImageList.from_tensors``).

| family (meta-architecture) | outputs (N detections) |
|---|---|
| ``rcnn`` (``GeneralizedRCNN``: RS / standard Faster, Cascade, Mask, GOL heads) | boxes (N, 4), scores (N,), classes (N,) int64, [mask_probs (N, 1, M, M) with ``MASK_ON``] |
| ``dense`` (``RankingRetinaNet``: aLRP / AP / RS-ATSS / RS-PAA) | boxes (N, 4), scores (N,), classes (N,) int64 |
| ``yolact`` (``YOLACT``) | boxes (N, 4), scores (N,), classes (N,) int64, masks (N, H, W) bool |
| ``solov2`` (``SOLOv2``) | boxes (N, 4), scores (N,), classes (N,) int64, masks (N, H, W) bool |

Boxes are XYXY in the pixels of the input tensor (Detectron2's exported models likewise return
boxes at the input resolution; scaling to the original image is the caller's). R-CNN masks are
the mask head's M×M probabilities of each box (Detectron2's ``do_postprocess=False`` output);
they are pasted into the image by the caller (``tools/deploy/run_exported.py``).

The R-CNN family is traced through the model's own ``inference``, the dense family through the
model's own per-image decoding in its traceable form. YOLACT and SOLOv2 run the model's own
modules with a traceable per-image decoding written in their modules, equal to the eager code
in every step, because the eager code decides on data-dependent Python values (a top-k size
from ``min(k, n)``, ``int(...)`` of a count, early returns on empty tensors) that a trace would
freeze at the sample's values.
"""
from __future__ import annotations

import contextlib
import types
from typing import Dict, Tuple

import torch
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet

__all__ = ["FAMILIES", "OUTPUT_NAMES", "family_of", "inference_function", "eager_outputs"]

FAMILIES = ("rcnn", "dense", "yolact", "solov2")

OUTPUT_NAMES: Dict[str, Tuple[str, ...]] = {
    "rcnn": ("boxes", "scores", "classes"),
    "rcnn_mask": ("boxes", "scores", "classes", "mask_probs"),
    "dense": ("boxes", "scores", "classes"),
    "yolact": ("boxes", "scores", "classes", "masks"),
    "solov2": ("boxes", "scores", "classes", "masks"),
}


def _registered(name):
    try:
        return META_ARCH_REGISTRY.get(name)
    except KeyError:
        return None


def family_of(model) -> str:
    """The export family of a built model (by class, through ``META_ARCH_REGISTRY``)."""
    if isinstance(model, GeneralizedRCNN):
        return "rcnn"
    if isinstance(model, RetinaNet):
        return "dense"
    for family, name in (("yolact", "YOLACT"), ("solov2", "SOLOv2")):
        cls = _registered(name)
        if cls is not None and isinstance(model, cls):
            return family
    raise ValueError(f"no export for meta-architecture {type(model).__name__}; exportable: "
                     "GeneralizedRCNN, RankingRetinaNet / RetinaNet, YOLACT, SOLOv2")


def output_names(model) -> Tuple[str, ...]:
    family = family_of(model)
    if family == "rcnn" and getattr(model.roi_heads, "mask_on", False):
        return OUTPUT_NAMES["rcnn_mask"]
    return OUTPUT_NAMES[family]


def _rsloss_modules(model):
    """Names of the rsloss_d2 modules defining the model's submodules (``len()`` patched there,
    as Detectron2 patches it in its own ROI heads)."""
    return sorted({type(m).__module__ for m in model.modules()
                   if type(m).__module__.startswith("rsloss_d2.")})


# ---------------------------------------------------------------------------- R-CNN
def _rcnn(model, image):
    with patch_builtin_len(_rsloss_modules(model)):
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    out = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
    if inst.has("pred_masks"):
        out = out + (inst.pred_masks,)
    return out


# ---------------------------------------------------------------------------- dense
def _dense_single_image(self, anchors, box_cls, box_delta, image_size):
    """``RankingRetinaNet.inference_single_image`` in its traceable form."""
    from rsloss_d2.modeling.ranking_retinanet.meta_arch import RankingRetinaNet

    return RankingRetinaNet._detections_single_image(self, anchors, box_cls, box_delta,
                                                     image_size, traceable=True)


@contextlib.contextmanager
def _instance_method(model, name, fn):
    """Bind ``fn`` as ``model.<name>`` for this instance only, restoring it afterwards."""
    had = name in model.__dict__
    old = model.__dict__.get(name)
    setattr(model, name, types.MethodType(fn, model))
    try:
        yield
    finally:
        if had:
            setattr(model, name, old)
        else:
            delattr(model, name)


def _dense(model, image):
    with _instance_method(model, "inference_single_image", _dense_single_image):
        inst = model([{"image": image}])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


_FUNCS = {"rcnn": _rcnn, "dense": _dense}


def _register_late():
    # YOLACT / SOLOv2 functions live in their own modules (imported lazily: they need only
    # their family's layers)
    from .yolact import yolact_outputs
    from .solov2 import solov2_outputs

    _FUNCS["yolact"] = yolact_outputs
    _FUNCS["solov2"] = solov2_outputs


def inference_function(model):
    """``(model, image) -> tuple of tensors`` of the model's family (:data:`OUTPUT_NAMES`)."""
    family = family_of(model)
    if family not in _FUNCS:
        _register_late()
    return _FUNCS[family]


# ---------------------------------------------------------------------------- eager reference
@torch.no_grad()
def eager_outputs(model, image):
    """The eager model's own outputs of one image, in the order of :func:`output_names`.

    What an exported model must reproduce: ``GeneralizedRCNN.inference(do_postprocess=False)``;
    the forward of the other families at the input size (``height`` / ``width`` = H, W).
    """
    family = family_of(model)
    if family == "rcnn":
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    else:
        h, w = image.shape[-2:]
        inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    out = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
    if inst.has("pred_masks"):
        out = out + (inst.pred_masks,)
    return out
