"""Cross-process semantics of a tiny aLRP RankingRetinaNet: a 2-process gloo run (2 + 2 images,
DDP with ``broadcast_buffers=False`` as tools/train_net.py) against a 1-process run over the same
4 images.

* the aLRP self-balance weight, its sums and its counter are identical on both processes and
  follow the documented rule: after the period boundary ``w = (mean L_loc + mean L_cls) /
  mean L_loc`` over all (process, iteration) pairs with positives, from the per-process losses
  recorded here; an iteration where one process has no positive keeps the counters in lockstep;
* the logged statistics (EventStorage) are identical on both processes and are the means of the
  per-process values (``None`` values left out); the per-image positive / negative counts equal
  the 1-process run's;
* rank 0's checkpoint restores the self-balance state of every process exactly;
* ``put_scalars`` directly: Python numbers, tensors and ``None`` in one call, and a clear error
  when the processes log different names.
"""
import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "modeling"))

from _dense_helpers import build, dense_cfg, make_image  # noqa: E402

PERIOD = 3  # TINY_OVERRIDES of _dense_helpers
STEPS = 4   # boundary at the 3rd step, then one accumulated step
EMPTY_STEP = 1  # rank 1 gets two images without objects at this step


def _images():
    return [
        make_image(64, [(0, 6, 8, 30, 36), (1, 34, 30, 60, 58), (2, 36, 4, 56, 22)]),
        make_image(64, [(2, 10, 30, 40, 60), (1, 44, 6, 62, 30)]),
        make_image(64, [(1, 8, 8, 40, 40)]),
        make_image(64, [(0, 20, 24, 60, 50), (2, 2, 40, 20, 62)]),
    ]


def _batches(rank, world):
    """Per step, this process's images: 2 + 2 of the same 4 (world 2) or all 4 (world 1)."""
    imgs, empty = _images(), make_image(64, [])
    out = []
    for step in range(STEPS):
        per_rank = [imgs[:2], imgs[2:] if step != EMPTY_STEP else [empty, empty]]
        out.append(per_rank[rank] if world == 2 else per_rank[0] + per_rank[1])
    return out


def _run(rank, world, ckpt_dir=None):
    """STEPS SGD steps; per step the local losses, the logged scalars and the SB state."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    model = build(dense_cfg("aLRP"), seed=0)
    model.train()
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sb = model.self_balance
    rows = []
    with EventStorage(0) as storage:
        for step, batch in enumerate(_batches(rank, world)):
            storage.iter = step
            losses = ddp(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            weight = float(sb.weight)
            rows.append({
                "loss_cls": float(losses["loss_cls"].detach()),
                "loss_loc": float(losses["loss_bbox"].detach()) / weight,  # = w · L_loc / w
                "logged": {k: v[0] for k, v in storage.latest().items() if v[1] == step},
                "weight": weight,
                "stats": sb.stats.tolist(),
                "num_calls": int(sb.num_calls),
            })
    restored = None
    if ckpt_dir is not None:  # rank 0 saves (as Detectron2's checkpointer), every process loads
        if rank == 0:
            DetectionCheckpointer(model, ckpt_dir).save("model_final")
        dist.barrier()
        fresh = build(dense_cfg("aLRP"), seed=1)
        DetectionCheckpointer(fresh, ckpt_dir).load(os.path.join(ckpt_dir, "model_final.pth"))
        restored = {n: getattr(fresh.self_balance, n).tolist()
                    for n in ("weight", "stats", "num_calls")}
        restored["_calls"] = fresh.self_balance._calls
    return rows, restored


def _put_scalars_cases(rank):
    """Mixed values (one collective), then different names on the two processes."""
    from detectron2.utils.events import EventStorage

    from rsloss_d2.modeling.events import put_scalars

    with EventStorage(0) as storage:
        put_scalars("x/", {"count": 3 * rank, "tensor": torch.tensor(1.0 + rank),
                           "only_rank0": 5.0 if rank == 0 else None, "nobody": None})
        mixed = {k: v[0] for k, v in storage.latest().items()}
        try:
            put_scalars("y/", {f"name{rank}": 1.0})
            error = None
        except RuntimeError as e:
            error = str(e)
    return mixed, error


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    # a mismatch of the collectives fails after 60 s instead of hanging the test session
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        result = _run(rank, world, ckpt_dir=out_dir)
        torch.save(result + _put_scalars_cases(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cross_process"))
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    two = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(2)]
    one, _ = _run(0, 1)
    return two, one


def _has_pos(rank, step):
    return not (rank == 1 and step == EMPTY_STEP)


def test_self_balance_is_identical_on_every_process_and_follows_the_rule(runs):
    (rows0, *_), (rows1, *_) = runs[0]
    for a, b in zip(rows0, rows1):
        assert a["weight"] == b["weight"] and a["stats"] == b["stats"]
        assert a["num_calls"] == b["num_calls"]
    # the empty step advanced the counters of both processes (lockstep) ...
    assert [r["num_calls"] for r in rows0] == [1, 2, 0, 1]
    assert rows0[0]["weight"] == rows0[1]["weight"] == 50.0
    # ... but added nothing to the sums: 5 (process, iteration) pairs with positives
    pairs = [(rows[s]["loss_cls"], rows[s]["loss_loc"]) for s in range(PERIOD)
             for r, rows in enumerate((rows0, rows1)) if _has_pos(r, s)]
    assert len(pairs) == 5
    assert rows1[EMPTY_STEP]["loss_cls"] == 0 and rows1[EMPTY_STEP]["loss_loc"] == 0
    mean_cls = sum(p[0] for p in pairs) / len(pairs)
    mean_loc = sum(p[1] for p in pairs) / len(pairs)
    assert rows0[PERIOD - 1]["weight"] == pytest.approx((mean_loc + mean_cls) / mean_loc, rel=1e-5)
    # after the boundary the sums hold the step after it, over both processes
    last = STEPS - 1
    assert rows0[last]["stats"] == pytest.approx(
        [rows0[last]["loss_cls"] + rows1[last]["loss_cls"],
         rows0[last]["loss_loc"] + rows1[last]["loss_loc"], 2.0], rel=1e-5)
    # the per-process weight of the official code would differ between the processes
    own = [((sum(r[s]["loss_loc"] for s in range(PERIOD) if _has_pos(k, s))
             + sum(r[s]["loss_cls"] for s in range(PERIOD) if _has_pos(k, s)))
            / sum(r[s]["loss_loc"] for s in range(PERIOD) if _has_pos(k, s)))
           for k, r in enumerate((rows0, rows1))]
    assert own[0] != pytest.approx(own[1], rel=1e-3)


def test_one_process_keeps_the_official_rule(runs):
    one = runs[1]
    assert [r["num_calls"] for r in one] == [1, 2, 0, 1]
    cls = sum(r["loss_cls"] for r in one[:PERIOD]) / PERIOD
    loc = sum(r["loss_loc"] for r in one[:PERIOD]) / PERIOD
    assert one[PERIOD - 1]["weight"] == pytest.approx((loc + cls) / loc, rel=1e-5)


def test_logged_statistics_are_the_cross_process_means(runs):
    (rows0, *_), (rows1, *_) = runs[0]
    one = runs[1]
    for step, (a, b) in enumerate(zip(rows0, rows1)):
        assert a["logged"] == b["logged"], step  # identical on both processes
        logged = a["logged"]
        assert logged["dense/self_balance_weight"] == pytest.approx(a["weight"])
        assert logged["dense/self_balance_period"] == PERIOD
        assert logged["dense/loss_loc_unweighted"] == pytest.approx(
            (a["loss_loc"] + b["loss_loc"]) / 2, rel=1e-5)
        if step == EMPTY_STEP:
            # mean_pos_giou_loss is undefined on rank 1 (no positive): rank 0's value only;
            # rank 1's L_loc = 0 is a value, so it enters the mean above
            assert "dense/mean_pos_giou_loss" in logged
        # per-image positives / negatives: the mean over processes (2 images each) equals the
        # 1-process value over the same 4 images (assignment does not depend on the scores)
        for k in ("dense/num_pos_anchors", "dense/num_neg_anchors"):
            assert logged[k] == pytest.approx(one[step]["logged"][k], rel=1e-6), (step, k)
    # a step where no process defines a statistic does not log it; one where one does, logs it
    assert "dense/mean_pos_giou_loss" in rows0[0]["logged"]


def test_rank0_checkpoint_restores_the_self_balance_of_every_process(runs):
    for rows, restored, *_ in runs[0]:
        assert restored["weight"] == pytest.approx(rows[-1]["weight"], rel=0, abs=0)
        assert restored["stats"] == rows[-1]["stats"]
        assert restored["num_calls"] == restored["_calls"] == rows[-1]["num_calls"] == 1


def test_put_scalars_means_numbers_tensors_and_undefined_values(runs):
    for _, _, mixed, error in runs[0]:
        assert mixed == {"x/count": 1.5, "x/tensor": 1.5, "x/only_rank0": 5.0}  # no "x/nobody"
        assert error is not None and "different names" in error


def test_put_scalars_in_one_process_skips_undefined_values():
    from detectron2.utils.events import EventStorage

    from rsloss_d2.modeling.events import put_scalars

    with EventStorage(0) as storage:
        put_scalars("x/", {"a": None, "b": torch.tensor(2.0), "c": 3})
        assert {k: v[0] for k, v in storage.latest().items()} == {"x/b": 2.0, "x/c": 3}
