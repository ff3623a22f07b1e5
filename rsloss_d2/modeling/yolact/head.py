"""YOLACT prediction head, protonet and semantic auxiliary head (Bolya et al. 2019, Sec. 3.1–3.2;
``mmdet/models/dense_heads/yolact_head.py``: mmdet ``YOLACTHead``, ``YOLACTProtonet``,
``YOLACTSegmHead``).

All convs have biases, xavier-uniform weights and zero biases (official init) and no normalisation
(official); ``MODEL.YOLACT.HEAD_NORM`` adds one (e.g. GN) after the shared head conv and the
protonet's 3×3 convs, for training from scratch (the CPU configs).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import get_norm

__all__ = ["YOLACTHead", "YOLACTProtonet", "YOLACTSemanticHead"]


def _xavier(*modules):
    for m in modules:
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


class YOLACTHead(nn.Module):
    """Prediction head shared by all FPN levels: one 3×3 conv + ReLU, then 3×3 convs to the class
    logits (A·K_out), box deltas (A·4) and mask coefficients (A·P, tanh; YOLACT Sec. 3.2)."""

    @configurable
    def __init__(self, *, in_channels: int, conv_dim: int, num_anchors: int,
                 num_cls_outputs: int, num_prototypes: int, norm: str = ""):
        """
        Args:
            num_cls_outputs: K + 1 for softmax (background last, YOLACT) or K (sigmoid, RS).
        """
        super().__init__()
        self.num_anchors = num_anchors
        self.num_cls_outputs = num_cls_outputs
        self.num_prototypes = num_prototypes
        self.shared = nn.Conv2d(in_channels, conv_dim, 3, padding=1)
        self.shared_norm = get_norm(norm, conv_dim) or nn.Identity()
        self.cls = nn.Conv2d(conv_dim, num_anchors * num_cls_outputs, 3, padding=1)
        self.box = nn.Conv2d(conv_dim, num_anchors * 4, 3, padding=1)
        self.coeff = nn.Conv2d(conv_dim, num_anchors * num_prototypes, 3, padding=1)
        _xavier(self.shared, self.cls, self.box, self.coeff)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        c = cfg.MODEL.YOLACT
        softmax = c.LOSS == "softmax_ohem"
        return {
            "in_channels": in_channels,
            "conv_dim": c.CONV_DIM,
            "num_anchors": len(c.ASPECT_RATIOS),
            "num_cls_outputs": c.NUM_CLASSES + (1 if softmax else 0),
            "num_prototypes": c.NUM_PROTOTYPES,
            "norm": c.HEAD_NORM,
        }

    def forward(self, features: List[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            features: per level (B, C, H_l, W_l).

        Returns:
            logits (B, R, K_out), deltas (B, R, 4), coefficients (B, R, P), R = Σ_l H_l·W_l·A,
            rows ordered level, then y, x, then anchor (the order of :func:`yolact_anchors`).
        """
        logits, deltas, coeffs = [], [], []
        for x in features:
            x = F.relu(self.shared_norm(self.shared(x)))
            b = x.shape[0]
            logits.append(self.cls(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_cls_outputs))
            deltas.append(self.box(x).permute(0, 2, 3, 1).reshape(b, -1, 4))
            coeffs.append(torch.tanh(self.coeff(x)).permute(0, 2, 3, 1)
                          .reshape(b, -1, self.num_prototypes))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(coeffs, 1)


class YOLACTProtonet(nn.Module):
    """Protonet on P3: 3 × (3×3 conv + ReLU) → ×2 bilinear (``align_corners=False``) + ReLU →
    3×3 conv + ReLU → 1×1 conv to P prototypes + ReLU (prototypes ≥ 0; official
    ``include_last_relu``)."""

    @configurable
    def __init__(self, *, in_channels: int, conv_dim: int, num_prototypes: int,
                 norm: str = ""):
        super().__init__()
        self.pre = nn.ModuleList([nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3,
                                            padding=1) for i in range(3)])
        self.post = nn.Conv2d(conv_dim, conv_dim, 3, padding=1)
        self.norms = nn.ModuleList([get_norm(norm, conv_dim) or nn.Identity() for _ in range(4)])
        self.out = nn.Conv2d(conv_dim, num_prototypes, 1)
        _xavier(*self.pre, self.post, self.out)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        return {"in_channels": in_channels, "conv_dim": cfg.MODEL.YOLACT.CONV_DIM,
                "num_prototypes": cfg.MODEL.YOLACT.NUM_PROTOTYPES,
                "norm": cfg.MODEL.YOLACT.HEAD_NORM}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) P3 features → (B, P, 2H, 2W) prototypes."""
        for conv, norm in zip(self.pre, self.norms):
            x = F.relu(norm(conv(x)))
        x = F.relu(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        x = F.relu(self.norms[3](self.post(x)))
        return F.relu(self.out(x))


class YOLACTSemanticHead(nn.Module):
    """Semantic segmentation auxiliary head of YOLACT (Sec. 3.3, training only): a 1×1 conv on P3
    to K class logits, trained with per-pixel sigmoid BCE."""

    @configurable
    def __init__(self, *, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        _xavier(self.conv)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        return {"in_channels": in_channels, "num_classes": cfg.MODEL.YOLACT.NUM_CLASSES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
