"""Instance head of SOLO / Decoupled SOLO / SOLOv2: category branch + instance branch per level.

SOLOv2 Sec. 3 (category and dynamic-kernel branches; ``solov2_head.py`` of the SOLO repository) and
(SOLO v1: one mask channel per cell; Decoupled SOLO: X and Y mask branches). One module, three
instance branches selected by ``head_type``; the category branch and the per-level loop are
shared. Weights are shared across levels except the per-level output convs of SOLO / Decoupled
SOLO (their number of channels depends on S).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = ["SOLOInstanceHead", "coord_features", "split_level_features", "HEAD_TYPES"]

HEAD_TYPES = ("dynamic", "vanilla", "decoupled")


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) coordinate channels of ``x`` (B, C, H, W): x then y, each linspace(−1, 1)."""
    b, _, h, w = x.shape
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None].expand(b, 2, h, w)


def split_level_features(features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """"split_feats" of the official heads: [P2 ×0.5, P3, P4, P5, P6 resized to P5].

    Args:
        features: the five FPN maps P2..P6, each (B, C, H_l, W_l).

    Returns:
        five maps at strides [8, 8, 16, 32, 32] (bilinear, align_corners False: the ×0.5 of P2
        is an exact 2×2 average as the input is padded to a multiple of 32).
    """
    p2, p3, p4, p5, p6 = features
    return [
        F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False),
        p3,
        p4,
        p5,
        F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False),
    ]


def _tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """``num_convs`` × [3×3 conv (no bias), norm, ReLU]; convs init normal(0, 0.01)."""
    layers = []
    for i in range(num_convs):
        conv = Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1,
                      bias=not norm, norm=get_norm(norm, channels), activation=F.relu)
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.constant_(conv.bias, 0)
        layers.append(conv)
    return nn.Sequential(*layers)


def _pred_conv(in_channels: int, out_channels: int, kernel: int, bias_value: float) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias_value)
    return conv


class SOLOInstanceHead(nn.Module):
    """Category + instance branches of SOLO (``vanilla``), Decoupled SOLO and SOLOv2 (``dynamic``).

    Per level l with grid S_l:

    * category: level feature resized (bilinear) to S_l × S_l → tower → 3×3 conv to C logits
      (bias prior −log((1 − π)/π));
    * ``dynamic`` (SOLOv2): feature + coords resized to S_l × S_l → tower → 3×3 conv to E kernel
      weights per cell (the 1×1 dynamic conv applied to the mask features);
    * ``vanilla`` (SOLO): feature + coords → tower at the level's resolution → bilinear ×2 →
      per-level 1×1 conv to S_l² mask logits (one channel per cell);
    * ``decoupled``: feature + x-coord → X tower, feature + y-coord → Y tower, each → bilinear ×2
      → per-level 3×3 conv to S_l channels; mask(i, j) = σ(X_j)·σ(Y_i).
    """

    @configurable
    def __init__(
        self,
        *,
        head_type: str,
        num_classes: int,
        num_grids: Sequence[int],
        in_channels: int,
        channels: int,
        num_convs: int,
        num_kernels: int,
        norm: str = "GN",
        use_coord_conv: bool = True,
        prior_prob: float = 0.01,
    ):
        """
        Args:
            head_type: "dynamic" (SOLOv2), "vanilla" (SOLO) or "decoupled" (Decoupled SOLO).
            num_classes: C, foreground classes (sigmoid outputs, no background channel).
            num_grids: S per level, e.g. [40, 36, 24, 16, 12].
            in_channels: channels of the FPN maps (256).
            channels: tower channels C_f (SOLOv2 512, light 256, SOLO 256).
            num_convs: convs per tower (SOLOv2 4, light 2, SOLO 7).
            num_kernels: E, kernel weights per cell (dynamic only; = mask feature channels).
            norm: tower norm (GN(32) in the official heads).
            use_coord_conv: append the coordinate channels to the instance-branch input.
            prior_prob: π of the category (and SOLO mask) output bias.
        """
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        self.head_type = head_type
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.use_coord_conv = use_coord_conv
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        ncoord = 2 if use_coord_conv else 0

        self.cate_tower = _tower(in_channels, channels, num_convs, norm)
        self.cate_pred = _pred_conv(channels, num_classes, 3, bias_value)
        if head_type == "dynamic":
            self.kernel_tower = _tower(in_channels + ncoord, channels, num_convs, norm)
            self.kernel_pred = _pred_conv(channels, num_kernels, 3, 0.0)
        elif head_type == "vanilla":
            self.ins_tower = _tower(in_channels + ncoord, channels, num_convs, norm)
            self.ins_preds = nn.ModuleList(
                _pred_conv(channels, s * s, 1, bias_value) for s in self.num_grids
            )
        else:
            one = 1 if use_coord_conv else 0
            self.ins_tower_x = _tower(in_channels + one, channels, num_convs, norm)
            self.ins_tower_y = _tower(in_channels + one, channels, num_convs, norm)
            self.ins_preds_x = nn.ModuleList(
                _pred_conv(channels, s, 3, bias_value) for s in self.num_grids
            )
            self.ins_preds_y = nn.ModuleList(
                _pred_conv(channels, s, 3, bias_value) for s in self.num_grids
            )

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        s = cfg.MODEL.SOLOV2
        return {
            "head_type": s.INSTANCE_HEAD_TYPE,
            "num_classes": s.NUM_CLASSES,
            "num_grids": s.NUM_GRIDS,
            "in_channels": s.INSTANCE_IN_CHANNELS,
            "channels": s.INSTANCE_CHANNELS,
            "num_convs": s.NUM_INSTANCE_CONVS,
            "num_kernels": s.NUM_KERNELS,
            "norm": s.NORM,
            "use_coord_conv": s.USE_COORD_CONV,
            "prior_prob": s.PRIOR_PROB,
        }

    def forward(
        self, features: Sequence[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]]:
        """
        Args:
            features: the five level maps of :func:`split_level_features`, (B, C_in, H_l, W_l).

        Returns:
            ``cate_logits``: per level (B, C, S_l, S_l);
            ``ins_preds``: per level — dynamic: kernels (B, E, S_l, S_l); vanilla: mask logits
            (B, S_l², 2H_l, 2W_l); decoupled: a pair (X, Y) of (B, S_l, 2H_l, 2W_l) logits.
        """
        if len(features) != len(self.num_grids):
            raise ValueError(f"{len(features)} level features for {len(self.num_grids)} grids")
        cate_logits, ins_preds = [], []
        for level, (x, s) in enumerate(zip(features, self.num_grids)):
            coords = coord_features(x) if self.use_coord_conv else None
            cate_in = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            cate_logits.append(self.cate_pred(self.cate_tower(cate_in)))
            if self.head_type == "dynamic":
                k_in = x if coords is None else torch.cat([x, coords], dim=1)
                k_in = F.interpolate(k_in, size=(s, s), mode="bilinear", align_corners=False)
                ins_preds.append(self.kernel_pred(self.kernel_tower(k_in)))
            elif self.head_type == "vanilla":
                t = self.ins_tower(x if coords is None else torch.cat([x, coords], dim=1))
                t = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
                ins_preds.append(self.ins_preds[level](t))
            else:
                tx = self.ins_tower_x(x if coords is None else torch.cat([x, coords[:, :1]], 1))
                ty = self.ins_tower_y(x if coords is None else torch.cat([x, coords[:, 1:]], 1))
                tx = F.interpolate(tx, scale_factor=2, mode="bilinear", align_corners=False)
                ty = F.interpolate(ty, scale_factor=2, mode="bilinear", align_corners=False)
                ins_preds.append((self.ins_preds_x[level](tx), self.ins_preds_y[level](ty)))
        return cate_logits, ins_preds
