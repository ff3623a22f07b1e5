"""Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) on `torchvision.ops`.

Detectron2's `ModulatedDeformConv` needs its compiled `_C` extension, which a pure-Python install
lacks; `torchvision.ops.deform_conv2d` implements the same operator (CPU and CUDA) and accepts the
modulation mask. The official R101-DCN / X101-DCN RS models use mmcv's `ModulatedDeformConv2dPack`
(DCNv2, `deform_groups` 4, `fallback_on_stride` False) in ResNet stages c3-c5; this module packs
the same pieces: an offset/mask predictor conv plus the deformable conv itself.
"""
import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["ModulatedDeformConv2d"]


class ModulatedDeformConv2d(nn.Module):
    """A k x k conv sampling its inputs at learnt offsets, modulated by a learnt mask (DCNv2).

    y(p) = sum_k w_k · x(p + p_k + Δp_k) · m_k (DCNv2 paper, Eq. 3), where the offsets Δp_k
    (2 per kernel position and deformable group) and the masks m_k = sigmoid(·) (1 per kernel
    position and group) are predicted by `conv_offset`, a plain conv with the same kernel, stride,
    padding and dilation as the deformable one.

    `conv_offset` is zero-initialised (as in mmcv and Detectron2), so at initialisation the
    offsets are 0 and the masks are sigmoid(0) = 0.5: a freshly built modulated layer computes
    **half** the plain convolution with the same weights. This is the official behaviour (a
    pretrained ResNet's conv weights loaded into a DCNv2 stage start at half strength) and is kept.
    With `modulated=False` (DCNv1) there is no mask and the layer starts equal to the plain conv.

    Parameter names (`weight`, `bias`, `norm`) match Detectron2's `Conv2d`, so ImageNet ResNet
    checkpoints load into a deformable stage unchanged; `conv_offset.*` is new (left at zero).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        deform_groups=1,
        bias=True,
        modulated=True,
        norm=None,
        activation=None,
    ):
        """
        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
                `nn.Conv2d` (`groups` > 1 for ResNeXt).
            deform_groups (int): channel groups with their own offsets / masks (official 4).
            modulated (bool): DCNv2 (predict a mask) if True, DCNv1 (offsets only) if False.
            norm (nn.Module or None): applied after the convolution (Detectron2 `Conv2d` style).
            activation (callable or None): applied after `norm`.
        """
        super().__init__()
        assert in_channels % groups == 0 and in_channels % deform_groups == 0
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.norm = norm
        self.activation = activation

        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

        kk = self.kernel_size[0] * self.kernel_size[1]
        # Channels: 2·g·k² offsets ((dy, dx) pairs per group and kernel position, torchvision's
        # layout), then g·k² mask logits when modulated.
        self.conv_offset = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * deform_groups * kk,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        # Zero init: start from the regular sampling grid (and masks 0.5, see the class doc).
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x, offset=None, mask=None):
        """
        Args:
            x (Tensor): (N, C_in, H, W).
            offset, mask (Tensor or None): (N, 2·g·k², H', W') offsets and (N, g·k², H', W')
                masks in [0, 1] overriding the predicted ones (for tests / external predictors);
                both None: predicted by `conv_offset`.

        Returns:
            Tensor: (N, C_out, H', W').
        """
        if offset is None:
            pred = self.conv_offset(x)
            n_off = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
            offset = pred[:, :n_off]
            if self.modulated:
                mask = pred[:, n_off:].sigmoid()
        out = deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self):
        return (
            "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}, "
            "padding={padding}, dilation={dilation}, groups={groups}, "
            "deform_groups={deform_groups}, modulated={modulated}, bias={b}"
        ).format(b=self.bias is not None, **self.__dict__)
