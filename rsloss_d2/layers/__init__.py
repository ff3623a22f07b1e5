"""Layers without a compiled extension: CARAFE upsampling and DCNv2 on torchvision.ops."""
from .carafe import CARAFE, carafe  # noqa: F401
from .deform_conv import ModulatedDeformConv2d  # noqa: F401
from .normed import NormedConv2d, NormedLinear  # noqa: F401  (GOL normalised predictors)
from .matrix_nms import matrix_nms  # noqa: F401
from .fast_nms import fast_nms  # noqa: F401  (YOLACT Fast NMS)
