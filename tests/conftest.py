"""Shared fixtures: a small generated dataset root, a "foreign" COCO-format set (as a researcher's
own exporter writes it, see tests/data/foreign_coco.py) and one short real training + evaluation of
the README's main job on it through tools/train_net.py --dataset, reused by the end-to-end tests
(train, eval-only, demo, plots, oLRP)."""
import json
import logging
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
# the README's main job: RS-Mask R-CNN on `shapes`
QUICK_CONFIG = os.path.join(REPO, "configs", "shapes", "rs_mask_rcnn_R_18_FPN_quick.yaml")

# The short schedule used by the end-to-end tests (the README's main job runs 650 iterations).
E2E_OVERRIDES = [
    "SOLVER.MAX_ITER", "150", "SOLVER.STEPS", "(120,)", "SOLVER.WARMUP_ITERS", "30",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
]


@pytest.fixture(autouse=True)
def _loggers_propagate():
    """Detectron2's ``setup_logger`` (run in-process by Trainer / export tests) turns off the
    propagation of the "detectron2" / "rsloss_d2" loggers, which hides their records from the
    ``caplog`` of every later test: restore it after each test."""
    yield
    for name in ("detectron2", "rsloss_d2"):
        logging.getLogger(name).propagate = True


def pytest_generate_tests(metafunc):
    """A test module that lists ``LOSS_PATHS`` runs each test once per path of the ranking
    losses (the PyTorch one, "eager", and the compiled C one: rsloss_d2.losses.compiled)."""
    if "loss_path" in metafunc.fixturenames and hasattr(metafunc.module, "LOSS_PATHS"):
        metafunc.parametrize("loss_path", metafunc.module.LOSS_PATHS, indirect=True)


@pytest.fixture(autouse=True)
def loss_path(request):
    """The path of the ranking losses in this test: its ``LOSS_PATHS`` parameter; in
    tests/losses the PyTorch path by default (the compiled one has its own tests there);
    elsewhere what the process chooses ("auto")."""
    from rsloss_d2.losses import compiled

    name = getattr(request, "param", None)
    if name is None and request.node.path.parent.name == "losses":
        name = "eager"
    if name is None:
        yield compiled.get_implementation()
        return
    compiled.set_implementation(name)
    yield name
    compiled.set_implementation("auto")


def load_tool(name):
    """A script of tools/ (or of its benchmarks/ / diagnostics/ / deploy/ folders) as a module."""
    import importlib.util

    path = next(p for p in (os.path.join(REPO, "tools", d, name + ".py")
                            for d in ("", "benchmarks", "diagnostics", "deploy"))
                if os.path.isfile(p))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_train_net(args, datasets_root, timeout=1800, check=True):
    """Run tools/train_net.py in a subprocess; returns the CompletedProcess (stdout+stderr)."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, TRAIN_NET] + list(args), env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def parse_copypaste(log):
    """Detectron2's 'copypaste:' lines (Task / header / values) -> {task: {metric: value}}."""
    res, task, keys = {}, None, None
    for line in log.splitlines():
        m = re.search(r"copypaste: (.*)$", line)
        if not m:
            continue
        text = m.group(1).strip()
        if text.startswith("Task: "):
            task, keys = text[len("Task: "):], None
        elif keys is None:
            keys = text.split(",")
        else:
            res[task] = dict(zip(keys, map(float, text.split(","))))
    return res


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _generate_shapes(tmp_path_factory, folder, num_train, num_val, image_size):
    from rsloss_d2.data.synthetic import generate_all

    root = str(tmp_path_factory.mktemp(folder))
    generate_all(root, num_train=num_train, num_val=num_val, image_size=image_size, seed=0,
                 progress=False, which=("shapes",))
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small generated `shapes` dataset (80 train / 16 val images, 256 px)."""
    return _generate_shapes(tmp_path_factory, "datasets", 80, 16, 256)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A smaller `shapes` set (16 train / 4 val images of 128 px), read-only for its users."""
    return _generate_shapes(tmp_path_factory, "tiny_shapes", 16, 4, 128)


@pytest.fixture(scope="session")
def foreign_coco(tmp_path_factory):
    """The foreign COCO-format set (80 train / 16 val images) and its `--dataset` arguments
    (registered as `foreign_train` / `foreign_val`)."""
    from foreign_coco import make_foreign_coco

    paths = make_foreign_coco(str(tmp_path_factory.mktemp("foreign")))
    paths["dataset_args"] = ["--dataset", "foreign_train", paths["train"], paths["images"],
                             "--dataset", "foreign_val", paths["val"], paths["images"]]
    paths["opts"] = ["DATASETS.TRAIN", "('foreign_train',)", "DATASETS.TEST", "('foreign_val',)"]
    return paths


@pytest.fixture(scope="session")
def quick_run(foreign_coco, tmp_path_factory):
    """One short real training + evaluation of the main job's config (RS-Mask R-CNN) on the
    foreign COCO set, registered with `tools/train_net.py --dataset`."""
    out = str(tmp_path_factory.mktemp("quick_run"))
    proc = run_train_net(foreign_coco["dataset_args"] + ["--config-file", QUICK_CONFIG,
                         "OUTPUT_DIR", out] + foreign_coco["opts"] + E2E_OVERRIDES,
                         str(tmp_path_factory.mktemp("no_datasets")))
    metrics = read_metrics(out)
    final = [m for m in metrics if "bbox/AP" in m][-1]
    return {"output_dir": out, "log": proc.stdout, "metrics": metrics, "final": final,
            "foreign": foreign_coco}
