"""CARAFE against a naive per-pixel implementation written from the paper (Eq. 3, §3.1)."""
import pytest
import torch
import torch.nn.functional as F

from rsloss_d2.layers import CARAFE, carafe


def naive_carafe(x, kernels, k, group, scale):
    """Output pixel (oy, ox) = sum over the k x k window around source pixel (oy//s, ox//s)."""
    n, c, h, w = x.shape
    r = (k - 1) // 2
    out = x.new_zeros(n, c, h * scale, w * scale)
    for b in range(n):
        for ch in range(c):
            g = ch // (c // group)
            for oy in range(h * scale):
                for ox in range(w * scale):
                    sy, sx = oy // scale, ox // scale
                    acc = x.new_zeros(())
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = sy + ky - r, sx + kx - r
                            if 0 <= iy < h and 0 <= ix < w:
                                wgt = kernels[b, g * k * k + ky * k + kx, oy, ox]
                                acc = acc + x[b, ch, iy, ix] * wgt
                    out[b, ch, oy, ox] = acc
    return out


def naive_kernels(enc, k, group, scale):
    """Encoder output (N, G·k²·s², H, W) -> per-output-pixel softmax kernels, pixel by pixel."""
    n, _, h, w = enc.shape
    out = enc.new_zeros(n, group * k * k, h * scale, w * scale)
    for oy in range(h * scale):
        for ox in range(w * scale):
            sub = (oy % scale) * scale + ox % scale
            for g in range(group):
                chans = [(g * k * k + p) * scale * scale + sub for p in range(k * k)]
                logits = enc[:, chans, oy // scale, ox // scale]
                out[:, g * k * k:(g + 1) * k * k, oy, ox] = logits.softmax(dim=1)
    return out


@pytest.mark.parametrize("k,group,scale", [(3, 1, 2), (3, 2, 2), (5, 1, 2), (3, 1, 3)])
def test_carafe_matches_naive(k, group, scale):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    kernels = torch.rand(2, group * k * k, 3 * scale, 5 * scale, dtype=torch.float64)
    got = carafe(x, kernels, k, group, scale)
    torch.testing.assert_close(got, naive_carafe(x, kernels, k, group, scale))


def test_carafe_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    kernels = torch.rand(1, 2 * 9, 4, 6, dtype=torch.float64, requires_grad=True)
    # fast_mode: checks random projections of the Jacobian (the full one takes ~10 s here).
    assert torch.autograd.gradcheck(lambda a, b: carafe(a, b, 3, 2, 2), (x, kernels),
                                    fast_mode=True)


def test_module_kernels_and_forward_match_naive():
    torch.manual_seed(0)
    m = CARAFE(4, scale=2, up_kernel=3, up_group=2, compressed_channels=6).double()
    torch.nn.init.normal_(m.content_encoder.weight, std=0.5)  # non-trivial kernels
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    enc = m.content_encoder(m.channel_compressor(x))
    ref_k = naive_kernels(enc, 3, 2, 2)
    torch.testing.assert_close(m.predict_kernels(x), ref_k)
    torch.testing.assert_close(m(x), naive_carafe(x, ref_k, 3, 2, 2))
    # Kernels are normalised: each output pixel's weights sum to 1 per group.
    sums = m.predict_kernels(x).view(1, 2, 9, 6, 8).sum(2)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_module_gradcheck():
    torch.manual_seed(0)
    m = CARAFE(2, scale=2, up_kernel=3, compressed_channels=3).double()
    torch.nn.init.normal_(m.content_encoder.weight, std=0.5)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


@pytest.mark.parametrize("h,w", [(5, 7), (1, 1), (4, 9)])
def test_official_defaults_odd_sizes(h, w):
    m = CARAFE(16)  # up_kernel 5, up_group 1, encoder 3, compressed 64, scale 2
    assert m.content_encoder.out_channels == 25 * 4
    x = torch.randn(2, 16, h, w, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 16, 2 * h, 2 * w)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert m.content_encoder.weight.grad is not None


def test_init_is_near_box_filter():
    """mmcv init (encoder ~ N(0, 0.001)): kernels start almost uniform, so a constant map stays
    constant away from the zero-padded border."""
    torch.manual_seed(0)
    m = CARAFE(8)
    x = torch.full((1, 8, 9, 9), 2.0)
    y = m(x)
    torch.testing.assert_close(y[..., 4:-4, 4:-4], torch.full_like(y[..., 4:-4, 4:-4], 2.0),
                               atol=1e-2, rtol=0)
    assert F.interpolate(x, scale_factor=2).shape == y.shape
