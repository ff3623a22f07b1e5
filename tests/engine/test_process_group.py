"""`leave_process_group`: every process of a gloo group passes the barrier and ends with no
group; without a group it does nothing."""
import datetime
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import _find_free_port

from rsloss_d2.engine import leave_process_group


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))
    before = dist.is_initialized()
    if rank == 1:  # the slower process: rank 0 must wait for it in the barrier
        time.sleep(0.5)
    entered = time.time()
    leave_process_group()
    torch.save({"before": before, "after": dist.is_initialized(), "entered": entered,
                "left": time.time()}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_leaves_the_group_on_every_process(tmp_path):
    mp.spawn(_worker, args=(_find_free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [(s["before"], s["after"]) for s in states] == [(True, False)] * 2
    assert states[0]["left"] >= states[1]["entered"]  # rank 0 waited for the slower rank 1


def test_without_a_group_does_nothing():
    assert not dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()
