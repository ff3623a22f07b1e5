"""Cross-process semantics of a tiny aLRP RankingRetinaNet: a 2-process gloo run (2 + 2 images,
DDP with ``broadcast_buffers=False`` as tools/train_net.py) against a 1-process run over the same
4 images. The 2-process run is made twice (the ``runs`` fixture's two parameters): two processes
of one launcher (``mp.spawn``), and two "machines" of one process each on this host, i.e.
Detectron2's ``launch(num_gpus_per_machine=1, num_machines=2, machine_rank=r,
dist_url="tcp://127.0.0.1:PORT")`` called in two separate OS processes (gloo, CUDA hidden), as
``tools/train_net.py --num-machines 2 --machine-rank r`` does. Every check below holds for both:

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
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "modeling"))

from _dense_helpers import build, dense_cfg, make_image  # noqa: E402

from rsloss_d2.engine import leave_process_group  # noqa: E402

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


def _record(rank, world, out_dir):
    """The run of one process of a 2-process group, saved to ``out_dir/rank{rank}.pt``."""
    result = _run(rank, world, ckpt_dir=out_dir)
    torch.save(result + _put_scalars_cases(rank), os.path.join(out_dir, f"rank{rank}.pt"))


def _worker(rank, world, port, out_dir):
    """One of the two processes started by ``mp.spawn``."""
    torch.set_num_threads(1)
    # a mismatch of the collectives fails after 60 s instead of hanging the test session
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        _record(rank, world, out_dir)
    finally:
        dist.destroy_process_group()


def _machine(machine_rank, port, out_dir):
    """One "machine" (its own OS process, see ``_launch_two_machines``): Detectron2's ``launch``
    with one process on this machine, two machines in all. ``launch`` starts the process and
    joins the gloo group (no CUDA) with the given timeout."""
    from detectron2.engine import launch

    launch(_machine_worker, 1, num_machines=2, machine_rank=machine_rank,
           dist_url=f"tcp://127.0.0.1:{port}", args=(machine_rank, out_dir),
           timeout=datetime.timedelta(seconds=60))


def _machine_worker(machine_rank, out_dir):
    """The process that ``launch`` started on machine ``machine_rank``."""
    from detectron2.utils import comm

    torch.set_num_threads(1)
    topology = {"machine_rank": machine_rank, "rank": comm.get_rank(),
                "world_size": comm.get_world_size(), "local_rank": comm.get_local_rank(),
                "local_size": comm.get_local_size(), "backend": str(dist.get_backend())}
    torch.save(topology, os.path.join(out_dir, f"topology{machine_rank}.pt"))
    _record(comm.get_rank(), comm.get_world_size(), out_dir)
    leave_process_group()  # as tools/train_net.py's main: `launch` does not destroy the group


# the entry point of each "machine": python -c _MACHINE_ENTRY MACHINE_RANK PORT OUT_DIR
_MACHINE_ENTRY = (
    "import sys; sys.path[:0] = {paths!r}; import test_cross_process_stats as t; "
    "t._machine(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])")
MACHINES_TIMEOUT = 120  # s, both machines together (the run itself: 15 s on 2 idle cores)


def _launch_two_machines(out_dir, timeout=MACHINES_TIMEOUT, attempts=3):
    """Start the two "machines" as two OS processes and wait for both; fail with the output of
    both. The port found free here can be taken before machine 0 listens on it (another process's
    outgoing connection): then (EADDRINUSE) the run is repeated on another port."""
    for attempt in range(attempts):
        failure, outputs = _start_two_machines(out_dir, _free_port(), timeout)
        if failure is None:
            return
        if not any("EADDRINUSE" in out for out in outputs):
            break
    raise AssertionError(f"two-machine launch (attempt {attempt + 1}): {failure}" + "".join(
        f"\n--- machine {r}, last lines of its output ---\n{out[-4000:]}"
        for r, out in enumerate(outputs)))


def _start_two_machines(out_dir, port, timeout):
    """One try: the machines in their own process groups; as soon as one fails or the time is
    up, both are killed with the processes ``launch`` started. -> (failure or None, outputs)."""
    entry = _MACHINE_ENTRY.format(paths=[os.path.join(REPO, "tests"), os.path.dirname(__file__)])
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")  # gloo on CPU
    env.setdefault("OMP_NUM_THREADS", "1")
    logs = [os.path.join(out_dir, f"machine{r}.log") for r in range(2)]
    procs = []
    for r, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", entry, str(r), str(port), out_dir], cwd=REPO, env=env,
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
    deadline, reason = time.monotonic() + timeout, None
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                reason = "a machine failed"
                break
            if time.monotonic() > deadline:
                reason = f"timed out after {timeout} s"
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:  # not reaped: its process group exists
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    codes = [p.returncode for p in procs]
    outputs = []
    for log in logs:
        with open(log, errors="replace") as f:
            outputs.append(f.read())
    if reason is None and codes == [0, 0]:
        return None, outputs
    return (f"{reason or 'a machine failed'}, exit codes {codes} (-9: killed here), "
            f"port {port}"), outputs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_ranks(out):
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    """The 1-process run over the same 4 images, per step."""
    return _run(0, 1)[0]


@pytest.fixture(scope="module")
def machine_runs(tmp_path_factory):
    """The two-"machine" run: (per-rank results, per-machine topology seen by the process)."""
    out = str(tmp_path_factory.mktemp("cross_machine"))
    _launch_two_machines(out)
    return _load_ranks(out), [torch.load(os.path.join(out, f"topology{r}.pt")) for r in range(2)]


@pytest.fixture(scope="module", params=["2_processes", "2_machines"])
def runs(request, tmp_path_factory, one_process):
    """(per-rank results of the 2-process run, the 1-process run)."""
    if request.param == "2_machines":
        return request.getfixturevalue("machine_runs")[0], one_process
    out = str(tmp_path_factory.mktemp("cross_process"))
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return _load_ranks(out), one_process


def test_two_machines_are_two_launches_of_one_process_each(machine_runs):
    _, topology = machine_runs
    assert topology == [{"machine_rank": r, "rank": r, "world_size": 2, "local_rank": 0,
                         "local_size": 1, "backend": "gloo"} for r in range(2)]


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


def test_one_process_keeps_the_official_rule(one_process):
    one = one_process
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
        for k in ("dense/num_pos", "dense/num_neg"):
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
