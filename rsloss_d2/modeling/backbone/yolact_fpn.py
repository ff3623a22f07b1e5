"""The FPN of the official YOLACT config (mmdet ``FPN``, ``start_level=1``,
``add_extra_convs='on_input'``, ``upsample_cfg=dict(mode='bilinear')``; ``yolact_r50_1x8_coco.py``
of mmdet's YOLACT configs).

Differences from Detectron2's ``build_retinanet_resnet_fpn_backbone``: the top-down path upsamples
bilinearly *to the size of the lower level* (550 px input → P3..P5 of 69, 35, 18: not divisible by
2, so the input needs no padding), and P7 is computed from P6 without a ReLU in between.
"""
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone

from .retinanet_fpn import LastLevelP6P7

__all__ = ["YOLACTFPN", "build_yolact_resnet_fpn_backbone"]


class YOLACTFPN(FPN):
    """Detectron2 ``FPN`` whose top-down path upsamples bilinearly to the lateral's size."""

    @property
    def size_divisibility(self):
        return 0  # any input size works (the upsampling follows the lateral sizes)

    def forward(self, x):
        bottom_up = self.bottom_up(x)
        prev = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        results = [self.output_convs[0](prev)]
        for idx in range(1, len(self.lateral_convs)):
            lateral = self.lateral_convs[idx](bottom_up[self.in_features[-idx - 1]])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="bilinear",
                                           align_corners=False)
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, self.output_convs[idx](prev))
        if self.top_block is not None:
            src = bottom_up.get(self.top_block.in_feature)
            if src is None:
                src = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(src))
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_yolact_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (``MODEL.RESNETS.*``) + :class:`YOLACTFPN` on ``MODEL.FPN.IN_FEATURES`` (res3–res5)
    with P6/P7 from C5: P3–P7, ``MODEL.FPN.OUT_CHANNELS`` channels."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return YOLACTFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6p7, out_channels, "res5", relu_before_p7=False,
                                norm=cfg.MODEL.FPN.NORM, init="xavier_uniform"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
