"""Mixed precision on CPU for Detectron2's `SimpleTrainer`.

Detectron2's `AMPTrainer` (fp16 autocast + gradient scaling) requires CUDA. On CPU,
`tools/train_net.py` with ``SOLVER.AMP.ENABLED True`` hands `SimpleTrainer` the model wrapped in
:class:`TrainingAutocast`, so that the trainer's own loop (data, backward, optimizer, metrics,
the non-finite loss check that raises `FloatingPointError` with the loss dict) is used unchanged
and only the forward runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``. bf16 has fp32's
exponent range, so no gradient scaling is needed. The ranking losses and Gumbel compute in fp32
inside (they leave autocast themselves).
"""
import torch
from torch import nn

__all__ = ["TrainingAutocast"]


class TrainingAutocast(nn.Module):
    """Runs the wrapped model's forward under `torch.autocast` in training mode only.

    Evaluation (``model.eval()``, as Detectron2's `inference_on_dataset` sets it) stays in fp32.
    The checkpointer keeps the unwrapped model, so checkpoints are the same with and without it.
    """

    def __init__(self, model: nn.Module, device_type: str = "cpu",
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.module = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        if not self.training:
            return self.module(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)
