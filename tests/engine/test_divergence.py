"""A ranking-loss run whose box regressor diverged stops (FloatingPointError naming the head)
instead of finishing at loss 0; iterations without objects never count."""
import math
import types

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from rsloss_d2 import engine
from rsloss_d2.engine import StopWithoutPositives

from conftest import QUICK_CONFIG

WARMUP, K = 2, 5


def _hook_run(logged, patience=3, start_iter=0):
    """Drive the hook over iterations; `logged[i]`: {name: value} the heads put at iteration i.
    Returns the iteration whose step raised, or None."""
    hook = StopWithoutPositives(patience, start_iter=start_iter)
    with EventStorage() as storage:
        hook.trainer = types.SimpleNamespace(storage=storage, iter=0)
        for it, values in enumerate(logged):
            storage.iter = hook.trainer.iter = it
            for name, value in values.items():
                storage.put_scalar(name, value)
            try:
                hook.after_step()
            except FloatingPointError as e:
                hook.error = str(e)
                return it, hook
    return None, hook


def test_consecutive_iterations_without_positives_stop_naming_the_head():
    zero = {"dense/mean_pos_iou": 0.0, "dense/num_pos": 12.0}
    it, hook = _hook_run([{"dense/mean_pos_iou": 0.6}, zero, zero, zero, zero])
    assert it == 3
    assert hook.error.startswith("Training diverged at iteration 3: no positive box overlaps its "
                                 "object in 3 consecutive iterations with objects, head 'dense' "
                                 "(dense/mean_pos_iou = 0.0 since iteration 1)")
    assert "SOLVER.MAX_ITERS_WITHOUT_POSITIVES 0" in hook.error


def test_a_positive_resets_and_nan_counts():
    ok, zero, nan = ({"rpn/mean_pos_iou": v} for v in (0.3, 0.0, math.nan))
    assert _hook_run([zero, zero, ok, zero, zero, ok, nan, zero])[0] is None
    assert _hook_run([zero, nan, nan])[0] == 2  # a NaN IoU is no overlap either


def test_iterations_without_objects_neither_count_nor_reset():
    zero, empty = {"fast_rcnn/mean_pos_iou": 0.0}, {"fast_rcnn/num_pos": 0.0}
    assert _hook_run([zero, empty, empty, zero, empty] + [empty] * 10)[0] is None
    assert _hook_run([zero, empty, empty, zero, empty, zero])[0] == 5


def test_warm_up_iterations_do_not_count():
    zero = {"yolact/mean_pos_iou": 0.0}
    assert _hook_run([zero] * 5, patience=3, start_iter=3)[0] is None
    assert _hook_run([zero] * 6, patience=3, start_iter=3)[0] == 5


def test_each_head_counts_on_its_own_and_all_stopped_heads_are_named():
    a, b = "rpn/mean_pos_iou", "fast_rcnn/mean_pos_iou"
    it, hook = _hook_run([{a: 0.0, b: 0.5}, {a: 0.0, b: 0.0}, {a: 0.0, b: 0.0},
                          {a: 0.4, b: 0.0}])
    assert it == 2 and "head 'rpn'" in hook.error and "fast_rcnn" not in hook.error
    it, hook = _hook_run([{a: 0.0, b: 0.0}] * 3)
    assert it == 2 and "heads 'rpn' (" in hook.error and " and 'fast_rcnn' (" in hook.error


def _train(opts, root, tmp_path, monkeypatch):
    """Train the main job's config (RS-Mask R-CNN) in-process at a learning rate of 1000."""
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    cfg = engine.load_config(QUICK_CONFIG, [
        "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()", "SOLVER.BASE_LR", "1000.0",
        "SOLVER.WARMUP_ITERS", str(WARMUP), "SOLVER.MAX_ITERS_WITHOUT_POSITIVES", str(K),
        "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "192", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "SEED", "1"] + opts)
    trainer = engine.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def test_huge_learning_rate_stops_within_warm_up_plus_k_iterations(tiny_shapes, tmp_path,
                                                                   monkeypatch):
    trainer = _train(["SOLVER.MAX_ITER", "40"], tiny_shapes, tmp_path, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"Training diverged at iteration \d+: .* head"
                                                 r"s? '(rpn|fast_rcnn)' \((rpn|fast_rcnn)/"
                                                 r"mean_pos_iou = (0\.0|nan) since"):
        trainer.train()
    assert trainer.iter < WARMUP + K + 2  # the regressor is off after a step or two
    assert not (tmp_path / "model_final.pth").exists()


def test_batches_without_objects_never_stop_the_run(tiny_shapes, tmp_path, monkeypatch):
    """The same run on the same images with their objects removed: nothing to position, no
    positive logged, no stop, however long it runs."""
    monkeypatch.setenv("DETECTRON2_DATASETS", tiny_shapes)
    name = "tiny_shapes_no_objects"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [dict(d, annotations=[]) for d in
                                               DatasetCatalog.get("shapes_train")])
        MetadataCatalog.get(name).set(
            thing_classes=MetadataCatalog.get("shapes_train").thing_classes)
    max_iter = WARMUP + K + 1  # past the iteration where the diverged run stops
    trainer = _train(["SOLVER.MAX_ITER", str(max_iter), "DATASETS.TRAIN", f"('{name}',)",
                      "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"],
                     tiny_shapes, tmp_path, monkeypatch)
    trainer.train()
    assert trainer.iter == max_iter
    assert "fast_rcnn/mean_pos_iou" not in trainer.storage.latest()  # no positive, ever
