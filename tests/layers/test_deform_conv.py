"""ModulatedDeformConv2d (DCNv2 on torchvision.ops): reduces to a plain conv, init, gradients."""
import pytest
import torch
import torch.nn.functional as F

from rsloss_d2.layers import ModulatedDeformConv2d


def _plain(m, x):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


@pytest.mark.parametrize("stride,dilation,groups,dg", [(1, 1, 1, 1), (2, 1, 2, 2), (1, 2, 4, 4)])
def test_zero_offset_unit_mask_equals_conv(stride, dilation, groups, dg):
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(8, 8, 3, stride=stride, padding=dilation, dilation=dilation,
                              groups=groups, deform_groups=dg, bias=True)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 8, 9, 7)
    ref = _plain(m, x)
    offset = torch.zeros(2, 2 * dg * 9, *ref.shape[-2:])
    mask = torch.ones(2, dg * 9, *ref.shape[-2:])
    torch.testing.assert_close(m(x, offset, mask), ref, atol=1e-5, rtol=1e-5)


def test_init_is_half_conv_when_modulated_and_conv_when_not():
    """conv_offset starts at zero: offsets 0, masks sigmoid(0) = 0.5 (mmcv / Detectron2 init)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 6)
    m = ModulatedDeformConv2d(8, 4, 3, padding=1, deform_groups=4, bias=False)
    assert m.conv_offset.out_channels == 3 * 4 * 9
    torch.testing.assert_close(m(x), 0.5 * _plain(m, x), atol=1e-5, rtol=1e-5)
    v1 = ModulatedDeformConv2d(8, 4, 3, padding=1, deform_groups=4, bias=False, modulated=False)
    assert v1.conv_offset.out_channels == 2 * 4 * 9
    torch.testing.assert_close(v1(x), _plain(v1, x), atol=1e-5, rtol=1e-5)


def test_integer_offset_shifts_sampling():
    """A (dy, dx) = (0, 1) offset on every tap of a 1x1 conv samples the right neighbour."""
    m = ModulatedDeformConv2d(1, 1, 1, bias=False)
    torch.nn.init.ones_(m.weight)
    x = torch.arange(12.0).view(1, 1, 3, 4)
    offset = torch.zeros(1, 2, 3, 4)
    offset[:, 1] = 1.0  # torchvision layout: (dy, dx) pairs
    out = m(x, offset, torch.ones(1, 1, 3, 4))
    expected = torch.cat([x[..., 1:], torch.zeros(1, 1, 3, 1)], dim=-1)  # zero outside
    torch.testing.assert_close(out, expected)


def test_gradient_reaches_offset_conv():
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(4, 4, 3, padding=1, deform_groups=2,
                              norm=torch.nn.GroupNorm(2, 4), activation=F.relu)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    m(x).pow(2).sum().backward()
    for p in (m.weight, m.conv_offset.weight, m.conv_offset.bias, x):
        g = p.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
