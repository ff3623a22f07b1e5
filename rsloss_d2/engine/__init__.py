"""Training-loop helpers for Detectron2's trainers."""
from .autocast import TrainingAutocast  # noqa: F401
from .process_group import leave_process_group  # noqa: F401
