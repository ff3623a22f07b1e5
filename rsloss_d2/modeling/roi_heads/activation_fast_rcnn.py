"""Fast R-CNN box predictor whose classification activation is a config choice (GOL).

GOL (Alexandridis et al., "Long-tailed Instance Segmentation using Gumbel Optimized Loss", ECCV
2022) and its official code (``mmdet/models/roi_heads/bbox_heads/`` of the GOL repository).
``MODEL.GOL.LOSS`` picks the loss and the
matching test activation:

===========  =========  ===============================================  ==================
LOSS         columns    loss (``loss_cls``)                               test scores
===========  =========  ===============================================  ==================
softmax      C + 1      Detectron2's softmax CE, mean over RoIs          softmax
sigmoid      C + 1      BCE-with-logits over the C+1 one-hot columns,    sigmoid
                        Σ / #RoIs (mmdet ``use_sigmoid``)
gumbel       C + 1      :func:`gumbel_cross_entropy`, avg_factor #RoIs   Gumbel
droploss     C          :func:`drop_loss` (Gumbel or sigmoid)            Gumbel / sigmoid
eql          C          :func:`eql_loss` (Gumbel or sigmoid)             Gumbel / sigmoid
===========  =========  ===============================================  ==================

C-column heads get a zero dummy background column at test (official ``get_activation``);
Detectron2's ``fast_rcnn_inference`` drops the last column of the C+1 heads (mmdet multiclass
NMS does the same). ``MODEL.GOL.TEST_ACTIVATION`` overrides the test activation: the official
"Sigmoid" ablation row used **softmax** test scores (mmdet 2.21 applies softmax unless the loss
declares custom channels); by default scores use the training activation.

The classifier is ``nn.Linear`` with a constant / normal init (``MODEL.GOL.CLS_INIT*``) or a
:class:`NormedLinear` (``NORMED_CLS_TEMPERATURE`` > 0). Box regression: Detectron2's
class-specific L1 (``SMOOTH_L1_BETA`` 0) over foreground RoIs / all RoIs, as mmdet.

DropLoss / EQL need the tail mask ``T(c) = 1[f(c) < λ]``: computed at the first training loss
from ``DATASETS.TRAIN`` (:func:`train_tail_mask`), so evaluation never needs the training set.
RoI labels must be in ``0..C`` (Detectron2's sampler never keeps ignored RoIs).
"""
import logging
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec, cat, cross_entropy
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
)
from detectron2.structures import Instances
from torch import nn

from rsloss_d2.layers import NormedLinear
from rsloss_d2.losses import drop_loss, eql_loss, gumbel_activation, gumbel_cross_entropy
from rsloss_d2.losses import tail_class_mask

from ..events import put_scalars

__all__ = ["ActivationFastRCNNOutputLayers", "train_tail_mask", "LOSSES"]

logger = logging.getLogger("detectron2." + __name__)  # shown by train_net's setup_logger

# loss -> (has a background column, default test activation or None = MODEL.GOL.ACTIVATION)
LOSSES = {
    "softmax": (True, "softmax"),
    "sigmoid": (True, "sigmoid"),
    "gumbel": (True, "gumbel"),
    "droploss": (False, None),
    "eql": (False, None),
}


def train_tail_mask(
    dataset_names: Sequence[str], num_classes: int, threshold: float, num_images: int = 0
) -> torch.Tensor:
    """Tail mask (C,) bool of the training set: ``image_count(c) / N < threshold``.

    With ``num_images`` > 0 and one dataset whose metadata has Detectron2's
    ``class_image_count`` (builtin LVIS v1), those counts are used (nothing is loaded).
    Otherwise the counts are derived from the annotations of the dataset dicts (images that
    contain the class, counted once per image), and ``N`` (if 0) is the number of images with at
    least one annotation (LVIS v1 train: 99,388, the official constant). A json without
    ``image_count`` therefore works.
    """
    counts = None
    meta = MetadataCatalog.get(dataset_names[0]) if len(dataset_names) == 1 else None
    if num_images > 0 and meta is not None and meta.get("class_image_count") is not None:
        counts = [c["image_count"] for c in sorted(meta.class_image_count, key=lambda c: c["id"])]
    else:
        counts = [0] * num_classes
        with_ann = 0
        for name in dataset_names:
            for d in DatasetCatalog.get(name):
                cats = {a["category_id"] for a in d.get("annotations", [])}
                with_ann += bool(cats)
                for c in cats:
                    if not 0 <= c < num_classes:
                        raise ValueError(f"train_tail_mask: category {c} of dataset '{name}' is "
                                         f"outside 0..{num_classes - 1} (NUM_CLASSES)")
                    counts[c] += 1
        num_images = num_images or with_ann
    if len(counts) != num_classes:
        raise ValueError(f"train_tail_mask: {len(counts)} category image counts for "
                         f"{num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES)")
    mask = tail_class_mask(counts, num_images, threshold)
    logger.info(f"DropLoss/EQL tail classes (image_count / {num_images} < {threshold}): "
                f"{int(mask.sum())} of {num_classes}")
    return mask


class ActivationFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Box predictor with softmax / sigmoid / Gumbel / DropLoss / EQL classification.

    ``forward(x)`` returns ``(logits (R, C+1) or (R, C), deltas (R, C·4))``. Built by
    ``GOLROIHeads`` (not registered: Detectron2 has no box-predictor registry).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        loss: str = "softmax",
        activation: str = "gumbel",
        test_activation: str = "",
        normed_temperature: float = 0.0,
        cls_init: str = "normal",
        cls_init_value: float = 0.01,
        cls_init_bias: float = 0.0,
        tail_mask: Union[torch.Tensor, Callable[[], torch.Tensor], None] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the box-trunk output.
            loss: one of :data:`LOSSES` (``MODEL.GOL.LOSS``).
            activation: "gumbel" or "sigmoid", for "droploss" / "eql".
            test_activation: "" (training activation), "softmax", "sigmoid" or "gumbel".
            normed_temperature: > 0: :class:`NormedLinear` classifier with this temperature.
            cls_init: "constant" or "normal" init of a plain linear classifier.
            cls_init_value: the constant weight, or the std of "normal".
            cls_init_bias: classifier bias init.
            tail_mask: (C,) bool tail mask, or a callable returning it (called at the first
                DropLoss / EQL loss), for "droploss" / "eql".
            kwargs: arguments of :class:`FastRCNNOutputLayers` (its CE / federated options are
                unused).
        """
        kwargs["use_fed_loss"] = False
        kwargs["use_sigmoid_ce"] = False
        super().__init__(input_shape, **kwargs)
        if loss not in LOSSES:
            raise ValueError(f"MODEL.GOL.LOSS must be one of {sorted(LOSSES)}, got {loss!r}")
        if activation not in ("gumbel", "sigmoid"):
            raise ValueError(f"activation must be 'gumbel' or 'sigmoid', got {activation!r}")
        has_bg, default_act = LOSSES[loss]
        self.test_activation = test_activation or default_act or activation
        if self.test_activation not in ("softmax", "sigmoid", "gumbel") or (
            self.test_activation == "softmax" and not has_bg
        ):
            raise ValueError(f"test activation {self.test_activation!r} with {loss!r}")
        if not has_bg and tail_mask is None:
            raise ValueError(f"loss {loss!r} needs a tail_mask")
        self.loss, self.activation, self.has_background = loss, activation, has_bg
        self._tail_mask = tail_mask

        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        out = self.num_classes + int(has_bg)
        if normed_temperature > 0:  # its own N(0, 0.01²) / 0 init wins
            self.cls_score = NormedLinear(input_size, out, temperature=normed_temperature)
        else:
            self.cls_score = nn.Linear(input_size, out)
            if cls_init == "constant":
                nn.init.constant_(self.cls_score.weight, cls_init_value)
            elif cls_init == "normal":
                nn.init.normal_(self.cls_score.weight, std=cls_init_value)
            else:
                raise ValueError(f"cls_init must be 'constant' or 'normal', got {cls_init!r}")
            nn.init.constant_(self.cls_score.bias, cls_init_bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        g = cfg.MODEL.GOL
        ret.update(
            loss=g.LOSS,
            activation=g.ACTIVATION,
            test_activation=g.TEST_ACTIVATION,
            normed_temperature=g.NORMED_CLS_TEMPERATURE,
            cls_init=g.CLS_INIT,
            cls_init_value=g.CLS_INIT_VALUE,
            cls_init_bias=g.CLS_INIT_BIAS,
        )
        if not LOSSES.get(g.LOSS, (True,))[0]:
            ret["tail_mask"] = lambda: train_tail_mask(
                list(cfg.DATASETS.TRAIN), cfg.MODEL.ROI_HEADS.NUM_CLASSES, g.TAIL_THRESHOLD,
                g.TAIL_NUM_IMAGES,
            )
        return ret

    def tail_mask(self, device) -> torch.Tensor:
        """The (C,) bool tail mask on ``device`` (computed once if given as a callable)."""
        if callable(self._tail_mask):
            self._tail_mask = self._tail_mask()
        mask = torch.as_tensor(self._tail_mask, dtype=torch.bool)
        if mask.numel() != self.num_classes:
            raise ValueError(f"tail mask has {mask.numel()} classes, head {self.num_classes}")
        self._tail_mask = mask.to(device)
        return self._tail_mask

    def classification_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor):
        """``loss_cls`` of :data:`LOSSES` and the statistics to log.

        Args:
            scores: (R, C+1) or (R, C) logits.  gt_classes: (R,) int64 in ``0..C``.
        """
        num = max(gt_classes.numel(), 1)
        stats = {}
        if self.loss == "softmax":
            loss = cross_entropy(scores.float(), gt_classes, reduction="mean")
        elif self.loss in ("sigmoid", "gumbel"):
            targets = F.one_hot(gt_classes, self.num_classes + 1).float()
            if self.loss == "gumbel":
                loss = gumbel_cross_entropy(scores, targets, avg_factor=num)
            else:
                loss = F.binary_cross_entropy_with_logits(
                    scores.float(), targets, reduction="sum") / num
        else:
            tail = self.tail_mask(scores.device)
            if self.loss == "droploss":
                loss, ratio = drop_loss(scores, gt_classes, tail, self.activation,
                                        return_ratio=True)
                stats["drop_tail_ratio"] = ratio.nan_to_num(-1.0)  # −1: no foreground RoI
            else:
                loss = eql_loss(scores, gt_classes, tail, self.activation)
        return loss, stats

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """``{"loss_cls", "loss_box_reg"}`` (see the module docstring).

        Args:
            predictions: ``(scores, deltas)`` of :meth:`forward`.
            proposals: sampled per-image Instances with ``proposal_boxes``, ``gt_classes`` and,
                for images with GT, ``gt_boxes``.
        """
        scores, deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=deltas.device)
        loss_cls, stats = self.classification_loss(scores, gt_classes)
        self._log(scores, gt_classes, stats)
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def _log(self, scores, gt_classes, stats):
        if self.has_background:
            _log_classification_stats(scores.detach(), gt_classes)
            if stats:
                put_scalars("fast_rcnn/", stats)
            return
        fg = gt_classes < self.num_classes
        pred = scores.detach().argmax(dim=1)
        stats["fg_cls_accuracy"] = ((pred == gt_classes) & fg).sum() / fg.sum().clamp(min=1)
        stats["num_fg_rois"] = fg.sum()
        put_scalars("fast_rcnn/", stats)

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ):
        """Per-image (Ri, C + 1) scores of the test activation (last column: background or a
        zero dummy column; ignored by ``fast_rcnn_inference``)."""
        scores = predictions[0].float()
        if self.test_activation == "softmax":
            probs = F.softmax(scores, dim=-1)
        elif self.test_activation == "sigmoid":
            probs = scores.sigmoid()
        else:
            probs = gumbel_activation(scores)
        if not self.has_background:
            probs = torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)
        return probs.split([len(p) for p in proposals], dim=0)
