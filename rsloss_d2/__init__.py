"""rsloss_d2: ranking-based losses (RS, aLRP, AP) and oLRP evaluation for Detectron2.

Importing the package registers its datasets (`shapes_*`) and model components in Detectron2's
registries, and the `rsloss_d2://` path handler of the shapes-pretrained backbone with
Detectron2's PathManager; nothing of Detectron2 is patched.
"""
__version__ = "0.1.0"

from .config import add_rsloss_config  # noqa: F401
from . import data  # noqa: F401  (registers the synthetic datasets)
from . import modeling  # noqa: F401  (registers meta-archs / heads)
from . import pretrained  # noqa: E402

pretrained.register_handler()  # MODEL.WEIGHTS "rsloss_d2://ShapesPretrained/R-18-GN.pkl"
