"""The dense head of the ranking-loss one-stage detectors (``RankingRetinaNet``).

Detectron2's ``RetinaNetHead`` (4 cls + 4 box 3×3 convs, ReLU, optional norm, normal std 0.01
init, prior-probability bias of the class logits) with one optional addition: a learnable scale
per FPN level that multiplies the raw box deltas, as the official ATSS / PAA heads (mmcv
``Scale``, init 1.0, no exp). With ``MODEL.RETINANET.NORM "GN"`` and ``LEVEL_SCALES True`` it is
the RS-ATSS / RS-PAA tower (GN 32, **no centerness / IoU branch**); with ``NORM ""`` and no
scales it is the aLRP / AP-Loss RetinaNet head.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

__all__ = ["RankingRetinaNetHead"]


class RankingRetinaNetHead(RetinaNetHead):
    """``RetinaNetHead`` + optional per-level box-delta scales.

    Forward: features, list of L tensors (N, C_in, H_l, W_l) → (logits, deltas), lists of
    (N, A·K, H_l, W_l) and (N, A·4, H_l, W_l).
    """

    @configurable
    def __init__(self, *, level_scales: bool = False, **kwargs):
        """
        Args:
            level_scales: one learnable scalar per level (init 1.0) multiplying the deltas.
            kwargs: arguments of Detectron2's :class:`RetinaNetHead`.
        """
        super().__init__(**kwargs)
        num_levels = len(kwargs["input_shape"])
        self.scales = nn.Parameter(torch.ones(num_levels)) if level_scales else None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["level_scales"] = cfg.MODEL.RANKING_RETINANET.LEVEL_SCALES
        return ret

    def forward(self, features: List[torch.Tensor]):
        logits, deltas = super().forward(features)
        if self.scales is not None:
            deltas = [d * self.scales[i] for i, d in enumerate(deltas)]
        return logits, deltas
