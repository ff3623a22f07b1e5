"""FPN whose top-down path upsamples with CARAFE (mmdet `FPN_CARAFE`, the "+" RS models).

Detectron2's `FPN` upsamples each coarser merged map with nearest interpolation before adding the
next lateral; mmdet's `FPN_CARAFE` (used by every "+" row of the RankSortLoss tables, with no
norm / activation) uses one CARAFE module per top-down step instead. `FPNCARAFE` subclasses
Detectron2's `FPN` (same lateral / output convs, names and output features p2..p6) and overrides
only the forward pass.

The extra level P6 (`MODEL.FPN_CARAFE.TOP_LEVEL`):
- "conv" (default, as mmdet's `FPN_CARAFE` with 4 inputs and 5 outputs): a 3x3 stride-2 conv on
  C5 is a sixth lateral that also takes part in the top-down path (its CARAFE upsampling is added
  to the P5 lateral) and gets its own 3x3 output conv;
- "maxpool": Detectron2's `LastLevelMaxPool` on the P5 output (the P6 of the plain FPN).

Registered: `build_resnet_fpn_carafe_backbone` (ResNet, or the DCN ResNet of `resnet_dcn.py` when
`MODEL.RESNETS.DEFORM_ON_PER_STAGE` has a True, + FPNCARAFE).
"""
import math

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

from rsloss_d2.layers import CARAFE

from .resnet_dcn import build_resnet_dcn_backbone

__all__ = ["FPNCARAFE", "LastLevelConvLateral", "build_resnet_fpn_carafe_backbone"]


class LastLevelConvLateral(nn.Module):
    """mmdet FPN_CARAFE's extra level: P6 lateral = 3x3/2 conv of C5, P6 = 3x3 conv of it.

    Unlike Detectron2's top blocks, the lateral is also the start of the top-down path, so
    `FPNCARAFE.forward` calls `lateral` and `output` separately.
    """

    def __init__(self, in_channels, out_channels, norm="", in_feature="res5"):
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature
        use_bias = norm == ""
        self.lateral = Conv2d(
            in_channels, out_channels, 3, stride=2, padding=1, bias=use_bias,
            norm=get_norm(norm, out_channels),
        )
        self.output = Conv2d(
            out_channels, out_channels, 3, padding=1, bias=use_bias,
            norm=get_norm(norm, out_channels),
        )
        for conv in (self.lateral, self.output):
            weight_init.c2_xavier_fill(conv)

    def forward(self, c5):
        """(N, C5, H, W) -> [(N, out_channels, ceil(H/2), ceil(W/2))] (no top-down input)."""
        return [self.output(self.lateral(c5))]


class FPNCARAFE(FPN):
    """Detectron2 `FPN` with CARAFE top-down upsampling (see the module doc)."""

    def __init__(
        self,
        bottom_up,
        in_features,
        out_channels,
        norm="",
        top_level="conv",
        fuse_type="sum",
        carafe_cfg=None,
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, fuse_type: as Detectron2's `FPN`.
            top_level (str): "conv" (mmdet FPN_CARAFE P6) or "maxpool" (Detectron2 P6).
            carafe_cfg (dict or None): keyword arguments of `CARAFE` other than `channels`
                (up_kernel, up_group, encoder_kernel, encoder_dilation, compressed_channels).
        """
        if top_level == "conv":
            c5 = bottom_up.output_shape()[in_features[-1]].channels
            top_block = LastLevelConvLateral(c5, out_channels, norm, in_feature=in_features[-1])
        elif top_level == "maxpool":
            top_block = LastLevelMaxPool()
        else:
            raise ValueError("MODEL.FPN_CARAFE.TOP_LEVEL must be 'conv' or 'maxpool'")
        super().__init__(
            bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
            fuse_type=fuse_type,
        )
        self._top_level = top_level
        carafe_cfg = dict(carafe_cfg or {})
        # One CARAFE per top-down step, named after the level it feeds (fpn_carafe4 upsamples
        # the merged P5 into P4) and listed top-down like `self.lateral_convs`; the coarsest
        # level has none unless the conv P6 feeds it.
        strides = [bottom_up.output_shape()[f].stride for f in in_features]
        self.upsamplers = []
        for i, stride in enumerate(reversed(strides)):
            if i == 0 and top_level == "maxpool":
                self.upsamplers.append(None)
                continue
            up = CARAFE(out_channels, scale=2, **carafe_cfg)
            self.add_module("fpn_carafe{}".format(int(math.log2(stride))), up)
            self.upsamplers.append(up)

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, 3, H, W) images, H and W multiples of `size_divisibility`.

        Returns:
            dict[str -> Tensor]: "p2".."p6", each (N, out_channels, H / s, W / s).
        """
        bottom_up_features = self.bottom_up(x)
        prev = None  # merged map of the level above, before its output conv
        if self._top_level == "conv":
            top_lateral = self.top_block.lateral(bottom_up_features[self.top_block.in_feature])
            prev = top_lateral
        results = []
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            merged = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])
            if prev is not None:
                up = self.upsamplers[idx](prev)
                # An odd-sized level is 1 pixel smaller than 2x the level above (mmdet slices too).
                up = up[..., : merged.shape[-2], : merged.shape[-1]]
                merged = merged + up
                if self._fuse_type == "avg":
                    merged = merged / 2
            prev = merged
            results.insert(0, output_conv(merged))
        if self._top_level == "conv":
            results.append(self.top_block.output(top_lateral))
        else:
            results.extend(self.top_block(results[-1]))  # max-pool of the P5 output
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_carafe_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (deformable stages per `MODEL.RESNETS.DEFORM_ON_PER_STAGE`) + `FPNCARAFE`."""
    c = cfg.MODEL.FPN_CARAFE
    return FPNCARAFE(
        bottom_up=build_resnet_dcn_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_level=c.TOP_LEVEL,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        carafe_cfg=dict(
            up_kernel=c.UP_KERNEL,
            up_group=c.UP_GROUP,
            encoder_kernel=c.ENCODER_KERNEL,
            encoder_dilation=c.ENCODER_DILATION,
            compressed_channels=c.COMPRESSED_CHANNELS,
        ),
    )
