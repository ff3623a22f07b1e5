"""ResNet / ResNeXt with modulated deformable 3x3 convolutions (DCNv2) in chosen stages.

The official R101-DCN and X101-64x4d-DCN RS models put mmcv's DCNv2 (`deform_groups` 4,
`fallback_on_stride` False) in the 3x3 conv of every bottleneck of stages c3-c5. Detectron2's
`build_resnet_backbone` already reads the matching keys (`MODEL.RESNETS.DEFORM_ON_PER_STAGE`,
`DEFORM_MODULATED`, `DEFORM_NUM_GROUPS`) but its `DeformBottleneckBlock` runs the compiled `_C` op.
`build_resnet_dcn_backbone` reads the same keys and builds Detectron2's `ResNet` from its
`BottleneckBlock`, swapping the 3x3 conv of the deformable stages for the torchvision-based
`ModulatedDeformConv2d`; nothing of Detectron2 is patched. Without any deformable stage it is
exactly `build_resnet_backbone`.

Registered: `build_resnet_dcn_backbone` (plain ResNet) and `build_resnet_dcn_fpn_backbone` (FPN
with Detectron2's max-pool P6 on top of it, the "R101-DCN" rows without CARAFE).
"""
import fvcore.nn.weight_init as weight_init
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import (
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

from rsloss_d2.layers import ModulatedDeformConv2d

__all__ = ["DCNBottleneckBlock", "build_resnet_dcn_backbone", "build_resnet_dcn_fpn_backbone"]


class DCNBottleneckBlock(BottleneckBlock):
    """Detectron2's `BottleneckBlock` whose 3x3 conv (`conv2`) is a deformable conv.

    Same arguments as `BottleneckBlock` (incl. `num_groups` for ResNeXt, `stride_in_1x1`,
    `dilation`) plus the deformable settings; the forward pass is `BottleneckBlock.forward`
    (conv2 predicts its own offsets). The deformable conv keeps the names `conv2.weight` /
    `conv2.norm.*`, so ImageNet checkpoints load as for the plain block.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        bottleneck_channels,
        stride=1,
        num_groups=1,
        norm="BN",
        stride_in_1x1=False,
        dilation=1,
        deform_modulated=True,
        deform_num_groups=1,
    ):
        """
        Args:
            deform_modulated (bool): DCNv2 (mask) if True, DCNv1 if False.
            deform_num_groups (int): deformable groups (official 4).
            others: see `BottleneckBlock`.
        """
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
        )
        # The stride goes where BottleneckBlock puts it; mmdet's `fallback_on_stride=False` means
        # the strided 3x3 conv is deformable too, which is what replacing conv2 always does.
        stride_3x3 = 1 if stride_in_1x1 else stride
        self.conv2 = ModulatedDeformConv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deform_groups=deform_num_groups,
            bias=False,
            modulated=deform_modulated,
            norm=get_norm(norm, bottleneck_channels),
        )
        weight_init.c2_msra_fill(self.conv2)  # as BottleneckBlock; conv_offset stays zero


@BACKBONE_REGISTRY.register()
def build_resnet_dcn_backbone(cfg, input_shape: ShapeSpec):
    """`build_resnet_backbone` with the torchvision-based deformable blocks.

    Reads Detectron2's keys: `MODEL.RESNETS.DEFORM_ON_PER_STAGE` (one bool per res2..res5),
    `DEFORM_MODULATED`, `DEFORM_NUM_GROUPS`; ResNeXt through `NUM_GROUPS` / `WIDTH_PER_GROUP`.

    Returns:
        ResNet: Detectron2's `ResNet` (`res2`..`res5` outputs as configured).
    """
    r = cfg.MODEL.RESNETS
    if not any(r.DEFORM_ON_PER_STAGE):
        return build_resnet_backbone(cfg, input_shape)
    depth = r.DEPTH
    assert depth in (50, 101, 152), "deformable stages need bottleneck blocks (R50/101/152)"
    assert r.RES5_DILATION in (1, 2), r.RES5_DILATION

    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    num_blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    # Same stage layout as Detectron2's build_resnet_backbone; only the block class differs.
    for idx, stage_idx in enumerate(range(2, 6)):
        dilation = r.RES5_DILATION if stage_idx == 5 else 1
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        kwargs = dict(
            bottleneck_channels=bottleneck_channels,
            stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=dilation,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
        )
        if r.DEFORM_ON_PER_STAGE[idx]:
            block_class = DCNBottleneckBlock
            kwargs.update(
                deform_modulated=r.DEFORM_MODULATED, deform_num_groups=r.DEFORM_NUM_GROUPS
            )
        else:
            block_class = BottleneckBlock
        stages.append(
            ResNet.make_stage(
                block_class,
                num_blocks[idx],
                stride_per_block=[first_stride] + [1] * (num_blocks[idx] - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                **kwargs,
            )
        )
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(
        stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


@BACKBONE_REGISTRY.register()
def build_resnet_dcn_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's FPN (nearest top-down, max-pool P6) on `build_resnet_dcn_backbone`."""
    return FPN(
        bottom_up=build_resnet_dcn_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
