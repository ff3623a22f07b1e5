"""Pure-PyTorch losses (no Detectron2 imports)."""
from .rank_sort import rank_sort_loss  # noqa: F401
