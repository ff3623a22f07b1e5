"""DCN ResNet / ResNeXt and the CARAFE FPN: build from cfg, forward / backward, equivalences."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BottleneckBlock, build_resnet_backbone

from rsloss_d2 import add_rsloss_config
from rsloss_d2.layers import ModulatedDeformConv2d
from rsloss_d2.modeling.backbone.fpn_carafe import FPNCARAFE
from rsloss_d2.modeling.backbone.resnet_dcn import DCNBottleneckBlock


def small_cfg(name, deform=(False, True, True, True), groups=1, width=8):
    """A thin R50 (few channels) so CPU tests stay fast; the block structure is the real one."""
    cfg = get_cfg()
    add_rsloss_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    r = cfg.MODEL.RESNETS
    r.DEPTH = 50
    r.STEM_OUT_CHANNELS = 16
    r.RES2_OUT_CHANNELS = 32
    r.NUM_GROUPS = groups
    r.WIDTH_PER_GROUP = width
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    r.DEFORM_ON_PER_STAGE = list(deform)
    r.DEFORM_MODULATED = True
    r.DEFORM_NUM_GROUPS = 4
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN_CARAFE.COMPRESSED_CHANNELS = 8
    return cfg


def _build(cfg):
    torch.manual_seed(0)
    return build_backbone(cfg, ShapeSpec(channels=3))


def _offset_params_have_grad(model):
    convs = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert convs
    return all(m.conv_offset.weight.grad is not None and m.conv_offset.weight.grad.abs().sum() > 0
               for m in convs)


@pytest.mark.parametrize("groups,width", [(1, 8), (4, 2)])  # ResNet, ResNeXt (grouped 3x3)
def test_dcn_resnet_builds_runs_and_trains_offsets(groups, width):
    cfg = small_cfg("build_resnet_dcn_backbone", groups=groups, width=width)
    model = _build(cfg)
    assert type(model.res2[0]) is BottleneckBlock  # res2 stays a plain block
    for stage in (model.res3, model.res4, model.res5):
        for block in stage:
            assert isinstance(block, DCNBottleneckBlock)
            assert block.conv2.deform_groups == 4 and block.conv2.groups == groups
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 16, 24), "res3": (1, 64, 8, 12),
        "res4": (1, 128, 4, 6), "res5": (1, 256, 2, 3)}
    # Perturb the offsets away from zero so gradients through the sampling grid are generic.
    for m in model.modules():
        if isinstance(m, ModulatedDeformConv2d):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.01)
    sum(v.pow(2).mean() for v in model(torch.randn(1, 3, 32, 32)).values()).backward()
    assert _offset_params_have_grad(model)
    # Frozen stem / res2 (FREEZE_AT 2) stay frozen.
    assert all(not p.requires_grad for p in model.res2.parameters())


def test_dcn_resnet_is_plain_resnet_without_deform_and_keeps_checkpoint_names():
    plain_cfg = small_cfg("build_resnet_dcn_backbone", deform=(False,) * 4)
    plain = _build(plain_cfg)
    ref = build_resnet_backbone(plain_cfg, ShapeSpec(channels=3))
    assert set(plain.state_dict()) == set(ref.state_dict())
    dcn = _build(small_cfg("build_resnet_dcn_backbone"))
    extra = set(dcn.state_dict()) - set(ref.state_dict())
    assert set(ref.state_dict()) <= set(dcn.state_dict())
    assert extra and all(".conv2.conv_offset." in k for k in extra)


def test_dcn_fpn_backbone():
    model = _build(small_cfg("build_resnet_dcn_fpn_backbone"))
    assert isinstance(model, FPN) and isinstance(model.bottom_up.res5[0], DCNBottleneckBlock)
    out = model(torch.randn(1, 3, 64, 64))
    assert [k for k in out] == ["p2", "p3", "p4", "p5", "p6"]
    assert out["p6"].shape == (1, 16, 1, 1)


@pytest.mark.parametrize("top", ["conv", "maxpool"])
def test_carafe_fpn_shapes_and_gradients(top):
    cfg = small_cfg("build_resnet_fpn_carafe_backbone")
    cfg.MODEL.FPN_CARAFE.TOP_LEVEL = top
    model = _build(cfg)
    assert isinstance(model, FPNCARAFE)
    names = {n.split(".")[0] for n, _ in model.named_parameters() if "carafe" in n}
    assert names == ({"fpn_carafe2", "fpn_carafe3", "fpn_carafe4"}
                     | ({"fpn_carafe5"} if top == "conv" else set()))
    # 72 x 100 is not a multiple of 32: odd-sized levels exercise the crop after upsampling.
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        out = model(x)
    assert model.output_shape()["p6"].stride == 64
    sizes = {k: tuple(v.shape[-2:]) for k, v in out.items()}
    assert sizes == {"p2": (18, 25), "p3": (9, 13), "p4": (5, 7), "p5": (3, 4), "p6": (2, 2)}
    for m in model.modules():  # non-trivial kernels so the encoder gets a generic gradient
        if hasattr(m, "content_encoder"):
            torch.nn.init.normal_(m.content_encoder.weight, std=0.1)
    sum(v.pow(2).mean() for v in model(x).values()).backward()
    assert model.fpn_carafe2.content_encoder.weight.grad.abs().sum() > 0
    assert model.fpn_carafe4.channel_compressor.weight.grad.abs().sum() > 0
    assert _offset_params_have_grad(model)
    if top == "conv":
        assert model.top_block.lateral.weight.grad.abs().sum() > 0


def test_carafe_fpn_with_1x1_kernels_equals_detectron2_fpn():
    """With up_kernel 1 every CARAFE kernel is [1]: nearest upsampling, so FPNCARAFE with the
    max-pool P6 must reproduce Detectron2's FPN exactly (same weights)."""
    cfg = small_cfg("build_resnet_fpn_carafe_backbone", deform=(False,) * 4)
    cfg.MODEL.FPN_CARAFE.TOP_LEVEL = "maxpool"
    cfg.MODEL.FPN_CARAFE.UP_KERNEL = 1
    ours = _build(cfg).eval()
    ref = FPN(build_resnet_backbone(cfg, ShapeSpec(channels=3)), cfg.MODEL.FPN.IN_FEATURES,
              cfg.MODEL.FPN.OUT_CHANNELS, top_block=LastLevelMaxPool()).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all(k.startswith("fpn_carafe") for k in unexpected)
    x = torch.randn(1, 3, 64, 96)
    a, b = ours(x), ref(x)
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
