"""Normalised ("normed") linear and 1×1 conv predictors of the GOL configs
(``mmdet/models/utils/normed_predictor.py``, as GOL's official configs use it).

Both compute a scaled cosine similarity plus a bias:

    W' = W / (‖W‖₂ + 1e-6)      norm of each output unit over the input channels (dim 1)
    x' = τ · x / (‖x‖₂ + 1e-6)  norm of each input vector (per RoI / per pixel) over channels
    out = x' W'ᵀ + b

``NormedLinear`` (box classifier, τ = 5) is initialised N(0, 0.01²) / bias 0 (its own
``init_weights``, which overrides the configs' Constant init_cfg); ``NormedConv2d`` (mask
predictor, τ = 20; the official keyword is misspelt ``tempearture``) has no init of its own: the
mask head gives it Kaiming normal (fan_out, relu) / bias 0.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormedLinear", "NormedConv2d"]

_EPS = 1e-6


class NormedLinear(nn.Linear):
    """``out = τ x/(‖x‖+ε) · (W/(‖W‖_row+ε))ᵀ + b``; input (N, in), output (N, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 temperature: float = 5.0):
        super().__init__(in_features, out_features, bias=bias)
        self.temperature = temperature
        nn.init.normal_(self.weight, mean=0, std=0.01)
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True) + _EPS)
        x = self.temperature * x / (x.norm(dim=1, keepdim=True) + _EPS)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temperature={self.temperature}"


class NormedConv2d(nn.Conv2d):
    """Conv with per-filter normalised weights (norm over dim 1) on per-pixel normalised
    inputs scaled by τ; input (N, in, H, W), output (N, out, H', W')."""

    def __init__(self, *args, temperature: float = 20.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True) + _EPS)
        x = self.temperature * x / (x.norm(dim=1, keepdim=True) + _EPS)
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temperature={self.temperature}"
