"""Unified mask-feature branch of SOLOv2 (``MaskFeatHead``; SOLOv2 paper Sec. 3.2.2, Fig. 3).

SOLOv2 Sec. 3.2 (mask feature branch); ``mask_feat_head.py`` of the SOLO repository. The dynamic
kernels of the instance head are applied to its output as a 1×1 convolution
(:func:`dynamic_mask_logits`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from torch import nn

from rsloss_d2.losses._step_sums import counts_per_bin

from .instance_head import coord_features

__all__ = ["SOLOv2MaskBranch", "dynamic_mask_logits"]


def _conv(in_channels: int, out_channels: int, kernel: int, norm: str) -> Conv2d:
    conv = Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not norm,
                  norm=get_norm(norm, out_channels), activation=F.relu)
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return conv


class SOLOv2MaskBranch(nn.Module):
    """P2–P5 → one stride-4 map F of E channels (≥ 0: the last layer is conv + GN + ReLU).

    Level k (P2 = 0) gets k × [3×3 conv + GN + ReLU, bilinear ×2] (P2: one conv, no upsampling);
    the coordinate channels are appended to the coarsest level (P5) before its first conv. The
    four stride-4 maps are summed and projected by 1×1 conv + GN + ReLU to E channels.
    """

    @configurable
    def __init__(self, *, num_levels: int, in_channels: int, channels: int, num_masks: int,
                 norm: str = "GN"):
        """
        Args:
            num_levels: inputs P2..P(1+num_levels) (official 4).
            in_channels: FPN channels (256); channels: inner channels (128); num_masks: E.
        """
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for level in range(num_levels):
            if level == 0:
                self.convs_all_levels.append(nn.Sequential(_conv(in_channels, channels, 3, norm)))
                continue
            layers = []
            for j in range(level):
                extra = 2 if (level == num_levels - 1 and j == 0) else 0
                layers.append(_conv((in_channels + extra) if j == 0 else channels, channels, 3,
                                    norm))
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(nn.Sequential(*layers))
        self.conv_pred = _conv(channels, num_masks, 1, norm)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        s = cfg.MODEL.SOLOV2
        return {
            "num_levels": len(s.MASK_IN_FEATURES),
            "in_channels": s.MASK_IN_CHANNELS,
            "channels": s.MASK_CHANNELS,
            "num_masks": s.NUM_MASKS,
            "norm": s.NORM,
        }

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: P2..P5, (B, C_in, H/4·2^-k, W/4·2^-k) → (B, E, H/4, W/4) mask features."""
        last = len(self.convs_all_levels) - 1
        out = None
        for level, (x, convs) in enumerate(zip(features, self.convs_all_levels)):
            if level == last and level > 0:
                x = torch.cat([x, coord_features(x)], dim=1)
            y = convs(x)
            out = y if out is None else out + y
        return self.conv_pred(out)


def dynamic_mask_logits(kernels: torch.Tensor, image_index: torch.Tensor,
                        mask_features: torch.Tensor,
                        max_per_image: Optional[int] = None) -> torch.Tensor:
    """Masks of cells by their dynamic 1×1 kernels: ``m_k = Σ_e w_{k,e} F_{b_k, e}`` (logits).

    Kernels are grouped by image into a zero-padded (B, P_max, E) batch and applied with one
    ``bmm``, so memory is B·P_max·H·W (not P·E·H·W nor P·B·H·W).

    Args:
        kernels: (P, E) kernel weights. image_index: (P,) int64 image of each kernel.
        mask_features: (B, E, H, W).
        max_per_image: the most kernels of one image (P_max), if the caller already read it on
            the host (SOLOTargets.max_pos_per_image); None: read here (one host sync).

    Returns:
        (P, H, W) mask logits in the order of ``kernels``.
    """
    b, e, h, w = mask_features.shape
    p = kernels.shape[0]
    if p == 0:
        return kernels.new_zeros((0, h, w)) + mask_features.sum() * 0
    order = torch.argsort(image_index, stable=True)
    sorted_img = image_index[order]
    counts = counts_per_bin(sorted_img, b)  # no host sync (bincount reads its max on CUDA)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(p, device=kernels.device) - starts[sorted_img]
    # the padded size depends on the data: one host read, unless the caller has it already
    p_max = int(counts.max()) if max_per_image is None else max_per_image
    padded = kernels.new_zeros((b, p_max, e))
    padded[sorted_img, slot] = kernels[order]
    out = torch.bmm(padded, mask_features.flatten(2))[sorted_img, slot]  # (P, H·W), sorted
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(p, device=order.device)
    return out[inverse].view(p, h, w)
