"""ResNet-FPN with P3–P7 as mmdet builds it for RetinaNet / ATSS / PAA (ranking-loss dense models),
and the one P6/P7 block of every P3–P7 FPN here (this one and YOLACT's, ``yolact_fpn.py``).

Detectron2's ``build_retinanet_resnet_fpn_backbone`` computes P6 from C5 and applies a ReLU before
P7. The official aLRP-Loss RetinaNet (``add_extra_convs='on_input'``), RS-ATSS / RS-PAA
(``'on_output'``) and YOLACT (``'on_input'``) use mmdet's FPN (``mmdet/models/necks/fpn.py``) with
``relu_before_extra_convs=False``: P6 = 3×3 stride-2 conv on C5 (on_input) or on the P5 output
(on_output), P7 = 3×3 stride-2 conv on P6, **no ReLU in between**.

Registered: ``build_retinanet_fpn_p6p7_backbone`` — ResNet / ResNeXt (deformable stages through
``MODEL.RESNETS.DEFORM_ON_PER_STAGE``, via ``build_resnet_dcn_backbone``) + Detectron2's ``FPN``
with that top block. Keys: ``MODEL.RANKING_RETINANET.P6_IN_FEATURE`` ("res5" / "p5") and
``MODEL.RANKING_RETINANET.RELU_BEFORE_P7``.
"""
import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from torch import nn

from .resnet_dcn import build_resnet_dcn_backbone

__all__ = ["LastLevelP6P7", "build_retinanet_fpn_p6p7_backbone"]


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(x), P7 = conv3x3/2([ReLU](P6)), x = C5 ("res5") or the P5 output ("p5"),
    each conv followed by ``norm`` if given.

    Args:
        in_channels, out_channels: channels of x and of P6 / P7.
        in_feature: "res5" or "p5" (Detectron2's ``top_block.in_feature``).
        relu_before_p7: ReLU between P6 and P7 (Detectron2 True, mmdet False).
        norm: norm after each conv, as the other FPN outputs (``MODEL.FPN.NORM``; mmdet: none —
            YOLACT's from-scratch GN configs need it, or P6 / P7 get a 10-20x larger scale).
        init: "c2_xavier" (Detectron2's ``c2_xavier_fill``) or "xavier_uniform" (mmdet's
            ``xavier_init(distribution='uniform')``, bias 0: YOLACT).
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5",
                 relu_before_p7: bool = False, norm: str = "", init: str = "c2_xavier"):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.relu_before_p7 = relu_before_p7
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        self.norm6 = get_norm(norm, out_channels) or nn.Identity()
        self.norm7 = get_norm(norm, out_channels) or nn.Identity()
        for module in (self.p6, self.p7):
            if init == "c2_xavier":
                weight_init.c2_xavier_fill(module)
            elif init == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            else:
                raise ValueError(f"init must be 'c2_xavier' or 'xavier_uniform', got {init!r}")

    def forward(self, x):
        """(N, C_in, H, W) -> [P6 (N, C, ⌈H/2⌉, ⌈W/2⌉), P7 (N, C, ⌈H/4⌉, ⌈W/4⌉)]."""
        p6 = self.norm6(self.p6(x))
        p7 = self.norm7(self.p7(F.relu(p6) if self.relu_before_p7 else p6))
        return [p6, p7]


@BACKBONE_REGISTRY.register()
def build_retinanet_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec):
    """ResNet(-DCN) + FPN on ``MODEL.FPN.IN_FEATURES`` (res3–res5) + P6/P7 (mmdet rules)."""
    bottom_up = build_resnet_dcn_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    c = cfg.MODEL.RANKING_RETINANET
    if c.P6_IN_FEATURE == "res5":
        in_channels = bottom_up.output_shape()["res5"].channels
    elif c.P6_IN_FEATURE == "p5":
        in_channels = out_channels
    else:
        raise ValueError(f"MODEL.RANKING_RETINANET.P6_IN_FEATURE must be 'res5' or 'p5', "
                         f"got {c.P6_IN_FEATURE!r}")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels, out_channels, c.P6_IN_FEATURE, c.RELU_BEFORE_P7),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
