"""Training hooks of the rsloss_d2 trainer."""
from detectron2.engine import HookBase

__all__ = ["StopWithoutPositives"]

# The statistic every RS head logs when its batch has assigned positives (`rpn/`, `fast_rcnn/`,
# `dense/`, `yolact/`; rsloss_d2.modeling.box_losses.rs_scalars): the mean IoU of the positives'
# regressed boxes with their objects, i.e. of their sorting targets (not logged without one).
POSITIVE_IOU_SUFFIX = "/mean_pos_iou"


class StopWithoutPositives(HookBase):
    """Stop a run whose box regressor has diverged, as Detectron2 stops one whose loss is NaN.

    RS Loss sorts the positives by the IoU of their regressed boxes (Rank & Sort Loss, Oksuz et
    al., ICCV 2021, Sec. 3.2: the sorting targets); a positive whose box does not overlap its
    object at all has target 0 and counts as a negative. When the regressor diverges (e.g. a far
    too large learning rate) every IoU becomes 0: the ranking loss has no positive, every loss of
    the head is exactly 0 with zero gradient (no positive, no error), so nothing can recover and
    nothing is NaN — the run would finish and save a useless model.

    After each step the hook reads the scalars the heads logged in this iteration (host values
    already in the EventStorage: no device read). A head ``<head>/mean_pos_iou`` that is logged
    (the batch had assigned positives, hence objects) and is not > 0 (0, or NaN) makes an
    iteration without positives for that head; ``patience`` such iterations in a row, counted
    from the end of the warm-up, raise ``FloatingPointError`` naming the head. Iterations where
    the head logged nothing (no objects in the batch, e.g. empty images kept on purpose) neither
    count nor break the run of bad iterations. Several processes: the logged value is the mean
    over the processes, so 0 means no process had a positive that overlaps its object.
    """

    def __init__(self, patience: int, start_iter: int = 0):
        """
        Args:
            patience: consecutive iterations without a positive that stop the run (> 0).
            start_iter: first iteration that counts (the end of the learning-rate warm-up).
        """
        self.patience = patience
        self.start_iter = start_iter
        self._bad = {}  # head -> (first bad iteration, number of bad iterations in a row)

    def after_step(self):
        it = self.trainer.iter
        if it < self.start_iter:
            return
        stopped = []
        for name, (value, logged_at) in self.trainer.storage.latest().items():
            if logged_at != it or not name.endswith(POSITIVE_IOU_SUFFIX):
                continue
            head = name[: -len(POSITIVE_IOU_SUFFIX)]
            if value > 0:
                self._bad.pop(head, None)
                continue
            first, count = self._bad.get(head, (it, 0))
            self._bad[head] = (first, count + 1)
            if count + 1 >= self.patience:
                stopped.append(f"'{head}' ({name} = {value} since iteration {first})")
        if stopped:
            raise FloatingPointError(
                f"Training diverged at iteration {it}: no positive box overlaps its object in "
                f"{self.patience} consecutive iterations with objects, "
                f"{'heads' if len(stopped) > 1 else 'head'} {' and '.join(stopped)}. The box "
                f"regressor has diverged: every IoU sorting target is 0, so the ranking loss has "
                f"no positive and every loss is 0. Lower "
                f"SOLVER.BASE_LR (or clip gradients: SOLVER.CLIP_GRADIENTS); "
                f"SOLVER.MAX_ITERS_WITHOUT_POSITIVES 0 turns this check off.")
