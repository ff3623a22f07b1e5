"""The dense head of the ranking-loss one-stage detectors (``RankingRetinaNet``).

Detectron2's ``RetinaNetHead`` (4 cls + 4 box 3×3 convs, ReLU, optional norm, normal std 0.01
init, prior-probability bias of the class logits) with two optional additions: a learnable
scale per FPN level that multiplies the raw box deltas, as the official ATSS / PAA heads (mmcv
``Scale``, init 1.0, no exp), and a quality branch: a 3×3 conv (A·1 outputs, normal std 0.01,
bias 0) on the regression tower, the centerness of the ATSS head (``atss_centerness`` of mmdet's
``atss_head.py``) or the IoU prediction of the PAA head (the same layer in ``paa_head.py``). With
``MODEL.RETINANET.NORM "GN"`` and ``LEVEL_SCALES True`` it is the RS-ATSS / RS-PAA tower (GN 32,
no quality branch) or, with the branch (losses ``focal_centerness`` / ``focal_iou_pred``), the
standard ATSS / PAA head; with ``NORM ""`` and no scales it is the aLRP / AP-Loss RetinaNet head.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from .baseline_losses import QUALITY_BRANCH_LOSSES

__all__ = ["RankingRetinaNetHead"]


class RankingRetinaNetHead(RetinaNetHead):
    """``RetinaNetHead`` + optional per-level box-delta scales and quality branch.

    Forward: features, list of L tensors (N, C_in, H_l, W_l) → (logits, deltas), lists of
    (N, A·K, H_l, W_l) and (N, A·4, H_l, W_l); with the quality branch (logits, deltas, quality),
    quality a list of (N, A·1, H_l, W_l) logits.
    """

    @configurable
    def __init__(self, *, level_scales: bool = False, quality_branch: bool = False, **kwargs):
        """
        Args:
            level_scales: one learnable scalar per level (init 1.0) multiplying the deltas.
            quality_branch: add the centerness / IoU-prediction conv on the regression tower.
            kwargs: arguments of Detectron2's :class:`RetinaNetHead`.
        """
        super().__init__(**kwargs)
        num_levels = len(kwargs["input_shape"])
        self.scales = nn.Parameter(torch.ones(num_levels)) if level_scales else None
        self.quality_pred = None
        if quality_branch:
            self.quality_pred = nn.Conv2d(self.bbox_pred.in_channels, kwargs["num_anchors"],
                                          kernel_size=3, stride=1, padding=1)
            nn.init.normal_(self.quality_pred.weight, mean=0, std=0.01)
            nn.init.constant_(self.quality_pred.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["level_scales"] = cfg.MODEL.RANKING_RETINANET.LEVEL_SCALES
        ret["quality_branch"] = cfg.MODEL.RANKING_RETINANET.LOSS in QUALITY_BRANCH_LOSSES
        return ret

    def forward(self, features: List[torch.Tensor]):
        if self.quality_pred is None:
            logits, deltas = super().forward(features)
            quality = None
        else:
            logits, deltas, quality = [], [], []
            for x in features:
                logits.append(self.cls_score(self.cls_subnet(x)))
                box_features = self.bbox_subnet(x)
                deltas.append(self.bbox_pred(box_features))
                quality.append(self.quality_pred(box_features))
        if self.scales is not None:
            deltas = [d * self.scales[i] for i, d in enumerate(deltas)]
        return (logits, deltas) if quality is None else (logits, deltas, quality)
