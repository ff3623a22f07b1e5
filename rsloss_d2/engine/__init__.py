"""Training-loop helpers for Detectron2's trainers."""
from .autocast import TrainingAutocast  # noqa: F401
