"""Layers without a compiled extension: CARAFE upsampling and DCNv2 on torchvision.ops."""
from .carafe import CARAFE, carafe  # noqa: F401
from .deform_conv import ModulatedDeformConv2d  # noqa: F401
