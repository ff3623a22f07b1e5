"""CARAFE: Content-Aware ReAssembly of FEatures (Wang et al., ICCV 2019), in plain PyTorch.

The official RS models with a "+" use mmcv's `CARAFEPack` (a CUDA op) in their FPN. This is a
pure-PyTorch equivalent with the same parameters and the same reassembly rule, so it runs on CPU
and on any GPU without a compiled extension:

- kernel prediction (paper §3.1): a 1x1 "channel compressor" to `compressed_channels`, then a
  `encoder_kernel` x `encoder_kernel` "content encoder" predicting scale² · up_group · up_kernel²
  channels; a pixel shuffle turns them into one up_kernel² kernel per output pixel and group,
  normalised by a softmax over its up_kernel² entries;
- reassembly (paper Eq. 3): output pixel (oy, ox) is the kernel-weighted sum of the
  up_kernel x up_kernel neighbourhood of the source pixel (oy // scale, ox // scale), with zeros
  outside the input (mmcv's `carafe` op).

Memory: unlike the fused CUDA op, this materialises every pixel's neighbourhood (`F.unfold`),
C·k_up²·H·W values per image plus a copy for the batched product (for the P3 -> P2 step of a
1333x800 image, 256 channels and k_up 5: about 0.4 GB each, in float32).
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["carafe", "CARAFE"]


def carafe(features, kernels, up_kernel, up_group, scale):
    """Reassemble `features` with per-output-pixel kernels (paper Eq. 3).

    Args:
        features (Tensor): (N, C, H, W) input; C must be divisible by `up_group`.
        kernels (Tensor): (N, up_group * up_kernel², scale·H, scale·W) reassembly kernels, channel
            `g * up_kernel² + ky * up_kernel + kx` weighting the neighbour at offset
            (ky - r, kx - r), r = (up_kernel - 1) // 2, for the channels of group g.
            Normally softmax-normalised over the up_kernel² entries (not required here).
        up_kernel (int): odd reassembly kernel size k_up.
        up_group (int): channel groups sharing one kernel.
        scale (int): integer upsampling factor.

    Returns:
        Tensor: (N, C, scale·H, scale·W).
    """
    n, c, h, w = features.shape
    k2 = up_kernel * up_kernel
    assert c % up_group == 0, (c, up_group)
    assert kernels.shape == (n, up_group * k2, scale * h, scale * w), kernels.shape
    # Every source pixel's k_up x k_up neighbourhood (zero padded): (N, C * k², H * W). It is shared
    # by the scale² output pixels of that source pixel, so instead of repeating it scale² times we
    # split the output grid into (H, scale, W, scale) and let einsum broadcast over the sub-pixels.
    neigh = F.unfold(features, up_kernel, padding=(up_kernel - 1) // 2)
    neigh = neigh.view(n, up_group, c // up_group, k2, h, w)
    kernels = kernels.view(n, up_group, k2, h, scale, w, scale)
    out = torch.einsum("ngckhw,ngkhiwj->ngchiwj", neigh, kernels)
    return out.reshape(n, c, scale * h, scale * w)


class CARAFE(nn.Module):
    """Content-aware upsampling by `scale` (mmcv `CARAFEPack` equivalent).

    Defaults are those of the official "+" configs (up_kernel 5, up_group 1, encoder_kernel 3,
    encoder_dilation 1, compressed_channels 64, scale 2). Parameter names follow mmcv
    (`channel_compressor`, `content_encoder`).
    """

    def __init__(
        self,
        channels,
        scale=2,
        up_kernel=5,
        up_group=1,
        encoder_kernel=3,
        encoder_dilation=1,
        compressed_channels=64,
    ):
        """
        Args:
            channels (int): channels C of the input (and output).
            scale (int): upsampling factor.
            up_kernel (int): odd reassembly kernel size.
            up_group (int): channel groups, each with its own predicted kernel.
            encoder_kernel (int): odd kernel size of the content encoder conv.
            encoder_dilation (int): dilation of the content encoder conv.
            compressed_channels (int): channels after the 1x1 compressor.
        """
        super().__init__()
        assert up_kernel % 2 == 1 and encoder_kernel % 2 == 1, (up_kernel, encoder_kernel)
        self.channels = channels
        self.scale = scale
        self.up_kernel = up_kernel
        self.up_group = up_group
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            up_group * up_kernel * up_kernel * scale * scale,
            encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        # mmcv's init: xavier-uniform compressor, and a near-zero encoder so that the initial
        # kernels are almost uniform (a k_up x k_up box filter) instead of random.
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def predict_kernels(self, x):
        """(N, C, H, W) features -> (N, up_group * up_kernel², scale·H, scale·W) kernels, each
        softmax-normalised over its up_kernel² entries (paper §3.1, kernel normaliser)."""
        enc = self.content_encoder(self.channel_compressor(x))
        # pixel_shuffle maps encoder channel (m * scale² + i * scale + j) to channel m of output
        # sub-pixel (i, j); m = g * up_kernel² + kernel position, as `carafe` expects.
        enc = F.pixel_shuffle(enc, self.scale)
        n, m, oh, ow = enc.shape
        enc = enc.view(n, self.up_group, -1, oh, ow)
        return F.softmax(enc, dim=2).view(n, m, oh, ow)

    def forward(self, x):
        """(N, C, H, W) -> (N, C, scale·H, scale·W)."""
        return carafe(x, self.predict_kernels(x), self.up_kernel, self.up_group, self.scale)

    def extra_repr(self):
        return "channels={}, scale={}, up_kernel={}, up_group={}".format(
            self.channels, self.scale, self.up_kernel, self.up_group
        )
