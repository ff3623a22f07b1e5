"""rsloss_d2: ranking-based losses (RS, aLRP, AP) and oLRP evaluation for Detectron2.

Importing the package registers its datasets (`shapes_*`) and model components in Detectron2's
registries; nothing of Detectron2 is patched.
"""
__version__ = "0.1.0"

from .config import add_rsloss_config  # noqa: F401
from . import data  # noqa: F401  (registers the synthetic datasets)
from . import modeling  # noqa: F401  (registers meta-archs / heads)
