"""Mask head with the normalised 1×1 predictor of GOL (``NormedMaskRCNNConvUpsampleHead``).

GOL's official mask head (mmdet ``FCNMaskHead`` with ``predictor_cfg=dict(type=
'NormedConv2d', tempearture=20)``). Detectron2's ``MaskRCNNConvUpsampleHead`` (convs, deconv,
per-pixel sigmoid BCE on the GT-class channel, mean over positives × 28 × 28) whose last 1×1 conv
``predictor`` (D → C masks) is a :class:`NormedConv2d`:

    mask_logits = conv(τ · x / (‖x‖₂ + 1e-6), W / (‖W‖₂ + 1e-6)) + b     (norms over channels)

τ = ``MODEL.GOL.MASK_NORMED_TEMPERATURE`` (20). Init as mmdet ``FCNMaskHead.init_weights``:
Kaiming normal (fan_out, relu), bias 0.
"""
from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
)
from torch import nn

from rsloss_d2.layers import NormedConv2d

__all__ = ["NormedMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class NormedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` with a :class:`NormedConv2d` predictor.

    Input (R, D, 14, 14) RoI features; output as Detectron2's mask heads (``loss_mask`` in
    training, ``pred_masks`` (R, 1, 28, 28) in inference).
    """

    @configurable
    def __init__(self, input_shape, *, temperature: float = 20.0, **kwargs):
        """
        Args:
            input_shape, kwargs: as :class:`MaskRCNNConvUpsampleHead`.
            temperature: τ of the normalised predictor input.
        """
        super().__init__(input_shape, **kwargs)
        old = self.predictor
        # same attribute name: keeps its place as the last layer of the nn.Sequential
        self.predictor = NormedConv2d(old.in_channels, old.out_channels, kernel_size=1,
                                      temperature=temperature)
        nn.init.kaiming_normal_(self.predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["temperature"] = cfg.MODEL.GOL.MASK_NORMED_TEMPERATURE
        return ret
