"""The trainer of `tools/train_net.py`: Detectron2's `DefaultTrainer` with rsloss_d2's evaluators,
train loader, CPU data parallelism and CPU mixed precision."""
import logging
import os
import weakref

import detectron2.utils.comm as comm
from detectron2.data import build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.utils.logger import setup_logger

from ..data.transforms import build_train_mapper
from ..evaluation.build import build_evaluator, format_baseline_comparison
from .autocast import TrainingAutocast
from .checkpoint import CheckedCheckpointer, check_loaded_weights
from .hooks import StopWithoutPositives

__all__ = ["Trainer"]

logger = logging.getLogger("detectron2")


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluator is chosen from the dataset's metadata (COCO or LVIS: AP,
    Optimal LRP when TEST.OLRP.ENABLED, ranking quality when TEST.RANKING_QUALITY.ENABLED), and
    which can train with several CPU processes."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ except for the DDP wrapper and the CPU AMP path: Detectron2's
        # `create_ddp_model` always passes `device_ids=[local_rank]`, which DDP rejects for a CPU
        # model, so `--num-gpus N` without CUDA (gloo) would fail.
        TrainerBase.__init__(self)
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(model, broadcast_buffers=False,
                                 **({"device_ids": None} if on_cpu else {}))
        if cfg.SOLVER.AMP.ENABLED and not on_cpu:  # fp16 + gradient scaling (CUDA only)
            self._trainer = AMPTrainer(model, data_loader, optimizer)
        elif cfg.SOLVER.AMP.ENABLED:  # CPU: bf16 autocast of the forward, SimpleTrainer's loop
            self._trainer = SimpleTrainer(TrainingAutocast(model), data_loader, optimizer)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CheckedCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then stops if the loaded weights leave modules unloaded that are not
        expected (`rsloss_d2.engine.checkpoint.check_loaded_weights`)."""
        super().resume_or_load(resume=resume)
        check_loaded_weights(self.checkpointer.model, self.checkpointer.incompatible,
                             self.checkpointer.loaded_path, self.cfg.MODEL.WEIGHTS_ALLOW_UNLOADED,
                             eval_only=False, logger=logger)

    def build_hooks(self):
        """DefaultTrainer's hooks with :class:`StopWithoutPositives` before the checkpointer (a
        diverged model is not saved)."""
        hooks = super().build_hooks()
        patience = self.cfg.SOLVER.MAX_ITERS_WITHOUT_POSITIVES
        if patience > 0:
            hooks.insert(2, StopWithoutPositives(patience, start_iter=self.cfg.SOLVER.WARMUP_ITERS))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # Detectron2's DatasetMapper, or the SSD-style augmentation (photometric distortion,
        # expand, min-IoU crop) of the YOLACT / aLRP-500 configs (INPUT.SSD_AUGMENTATION.ENABLED)
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    def train(self):
        # model_final.pth is written by the checkpointer hook at the last step, before the final
        # evaluation (which runs in after_train): if the evaluation fails, say how to redo it
        try:
            super().train()
        except Exception:
            final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            if self.iter >= self.max_iter and os.path.isfile(final):
                logger.error(
                    f"Training finished and the model is saved in {final}, but the evaluation "
                    f"failed (traceback below). Re-run only the evaluation with:\n  "
                    f"{getattr(self, 'eval_only_command', '--eval-only MODEL.WEIGHTS ' + final)}")
            raise
        results = getattr(self, "_last_eval_results", None)
        if results and len(self.cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test unwraps one set
            results = {self.cfg.DATASETS.TEST[0]: results}
        if comm.is_main_process() and results:
            comparison = format_baseline_comparison(self.cfg, results)
            if comparison:
                logger.info(comparison)
        return results
