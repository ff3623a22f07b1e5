"""The compiled CPU path of RS / aLRP / AP Loss (rsloss_d2.losses.compiled): what the shared loss
tests (run on both paths) do not cover — large inputs on several threads, huge logits, the cost
of a call, the build and its cache, and the fallback to the PyTorch path."""
import os
import subprocess
import sys

import pytest
import torch

from rsloss_d2.engine.checks import ConfigError, check_rank_loss_implementation
from rsloss_d2.engine.launch import load_config
from rsloss_d2.losses import alrp_loss, ap_loss, compiled, rank_sort_loss
from rsloss_d2.losses.op_count import count_host_reads, count_ops
from rsloss_d2.losses.reference import (
    alrp_loss_reference,
    ap_loss_reference,
    rank_sort_loss_reference,
)

from _ranking_cases import max_abs_diff

QUICK_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "shapes", "rs_mask_rcnn_R_18_FPN_quick.yaml")

LOSSES = ["rs", "alrp", "ap"]


def _run(name, logits, targets, loc=None, **kwargs):
    """(values, grad of the logits) of one forward + backward of the official output."""
    x = logits.detach().clone().requires_grad_(True)
    if name == "rs":
        out = rank_sort_loss(x, targets, **kwargs)
        (out[0] + out[1]).backward()
    elif name == "alrp":
        out = alrp_loss(x, targets, loc, **kwargs)
        out[0].backward()
    else:
        out = (ap_loss(x, targets, **kwargs),)
        out[0].backward()
    return [v.detach() for v in out[:2]], x.grad


def _reference(name, logits, targets, loc=None):
    if name == "rs":
        r = rank_sort_loss_reference(logits, targets, 0.5)
        return [r["loss_rank"], r["loss_sort"]], r["grad"]
    if name == "alrp":
        r = alrp_loss_reference(logits, targets, loc, 1.0)
        return [r["loss_cls"], r["loss_loc"]], r["grad"]
    r = ap_loss_reference(logits, targets, 1.0)
    return [r["loss"]], r["grad"]


def _assert_matches_reference(name, logits, targets, loc, tol):
    out, grad = _run(name, logits, targets, loc)
    ref_out, ref_grad = _reference(name, logits, targets, loc)
    for a, b in zip(out, ref_out):
        assert abs(a.item() - b.item()) < tol
    assert max_abs_diff(grad, ref_grad) < tol


def _large_case(name, seed=3, n=100_000, p=40):
    """n + p logits (100k: the threaded passes over all logits), p positives, negatives exactly
    on the breakpoints c ± δ and on the positives, far outliers; targets of the loss `name`."""
    g = torch.Generator().manual_seed(seed)
    delta = 0.5 if name == "rs" else 1.0
    logits = torch.randn(n + p, generator=g, dtype=torch.float64)
    logits[:p] += 1.0
    logits[p:2 * p] = logits[:p] - delta
    logits[2 * p:3 * p] = logits[:p] + delta
    logits[3 * p:4 * p] = logits[:p]
    logits[-3:] = torch.tensor([1e30, -1e30, 50.0], dtype=torch.float64)
    targets = torch.zeros(n + p, dtype=torch.float64)
    targets[:p] = torch.rand(p, generator=g, dtype=torch.float64).clamp_min(0.05) \
        if name == "rs" else 1.0
    targets[-10:-3] = -1
    loc = torch.rand(p, generator=g, dtype=torch.float64)
    return logits, targets, loc


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_input_on_threads_matches_reference(name, threads):
    logits, targets, loc = _large_case(name)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compiled.set_implementation("compiled")
        _assert_matches_reference(name, logits, targets, loc, 1e-9)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_positives_on_threads_matches_reference(threads):
    """600 positives: RS Loss's positive-pair passes run on the threads too."""
    logits, targets, _ = _large_case("rs", n=5000, p=600)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compiled.set_implementation("compiled")
        _assert_matches_reference("rs", logits, targets, None, 1e-9)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", LOSSES)
def test_huge_logits_match_reference(name):
    """Logits near the float limit next to ordinary ones: the exact official values (the
    differences of sums stay among ordinary numbers)."""
    compiled.set_implementation("compiled")
    logits = torch.tensor([3e38, -3e38, 0.0, 1.0, -1.0, 3.2e38, -3.3e38, 2.0],
                          dtype=torch.float64)
    targets = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float64)
    if name == "rs":
        targets = targets * 0.5
    loc = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    _assert_matches_reference(name, logits, targets, loc, 1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_strided_logits(name):
    compiled.set_implementation("compiled")
    logits, targets, loc = _large_case(name)
    wide = torch.stack([logits, torch.zeros_like(logits)], 1)  # logits = wide[:, 0], stride 2
    out, grad = _run(name, wide[:, 0], targets, loc)
    ref_out, ref_grad = _run(name, logits.clone(), targets, loc)
    assert [v.item() for v in out] == [v.item() for v in ref_out]
    assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("name", LOSSES)
def test_one_call_no_host_read(name):
    """Forward + backward: the output allocations aside, one C call and autograd's two
    operations (RS: + the sum of its two outputs; aLRP: + its localisation part, a rank-weighted
    mean of the errors); nothing read back, with or without ``num_positives``."""
    compiled.set_implementation("compiled")
    logits, targets, loc = _large_case(name)
    logits, targets, loc = logits.float(), targets.float(), loc.float()
    num = int((targets > 0).sum()) if name == "rs" else loc.numel()

    def step(**kwargs):
        x = logits.detach().requires_grad_(True)
        if name == "rs":
            a, b = rank_sort_loss(x, targets, **kwargs)
            (a + b).backward()
        elif name == "alrp":
            alrp_loss(x, targets, loc, **kwargs)[0].backward()
        else:
            ap_loss(x, targets, **kwargs).backward()

    for kwargs in ({}, {"num_positives": num}):
        ops = count_ops(lambda: step(**kwargs))
        assert sum(ops.values()) <= {"rs": 3, "alrp": 10, "ap": 2}[name], ops
        assert sum(count_host_reads(lambda: step(**kwargs)).values()) == 0


def test_other_devices_take_the_pytorch_path():
    compiled.set_implementation("auto")
    assert compiled.library_for(torch.zeros(3)) is not None
    assert compiled.library_for(torch.zeros(3, device="meta")) is None
    compiled.set_implementation("eager")
    assert compiled.library_for(torch.zeros(3)) is None
    with pytest.raises(ValueError, match="must be one of"):
        compiled.set_implementation("fast")


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """A process that has not built the library yet, with an empty cache folder."""
    monkeypatch.setenv("RSLOSS_D2_CACHE_DIR", str(tmp_path))
    for key, value in (("library", None), ("tried", False), ("error", None),
                       ("build_seconds", None)):
        monkeypatch.setitem(compiled._state, key, value)
    return tmp_path


def test_built_once_then_loaded_from_the_cache(fresh_build, monkeypatch):
    assert compiled.library() is not None
    assert compiled.build_seconds() is not None
    built = list((fresh_build / "kernels").glob("ranking_losses-*.so"))
    assert len(built) == 1
    # a second process: loads the file, builds nothing
    monkeypatch.setitem(compiled._state, "tried", False)
    monkeypatch.setitem(compiled._state, "build_seconds", None)
    assert compiled.library() is not None and compiled.build_seconds() is None
    assert list((fresh_build / "kernels").glob("ranking_losses-*.so")) == built


def test_a_new_build_keeps_only_the_most_recent_versions(fresh_build):
    folder = fresh_build / "kernels"
    folder.mkdir()
    old = [folder / f"ranking_losses-{i:016x}.so" for i in range(compiled.KEEP_BUILDS + 2)]
    for age, path in enumerate(old):  # old[0] the most recent
        path.write_bytes(b"an older version")
        os.utime(path, (1e9 - age * 1000, 1e9 - age * 1000))
    other = folder / "notes.txt"
    other.write_text("not a library")
    assert compiled.library() is not None and compiled.build_seconds() is not None
    left = sorted(folder.glob("ranking_losses-*.so"))
    new = [p for p in left if p not in old]
    assert len(new) == 1 and new[0].read_bytes()[:4] == b"\x7fELF"
    assert left == sorted(new + old[: compiled.KEEP_BUILDS - 1])
    assert other.exists()


def test_without_a_compiler_auto_falls_back_and_compiled_is_an_error(fresh_build, monkeypatch,
                                                                      tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc either
    compiled.set_implementation("auto")
    logits, targets, loc = _large_case("rs")
    out, grad = _run("rs", logits, targets)
    ref_out, ref_grad = _reference("rs", logits, targets)
    assert abs(out[0].item() - ref_out[0].item()) < 1e-9
    assert max_abs_diff(grad, ref_grad) < 1e-9
    assert compiled.library() is None and "no C compiler" in compiled.get_error()
    # the PyTorch path was taken: its many operations, not one C call
    assert sum(count_ops(lambda: _run("ap", logits, targets.clamp(max=1).ceil())).values()) > 40
    with pytest.raises(RuntimeError, match="'compiled': no C compiler"):
        compiled.set_implementation("compiled")
    cfg = load_config(QUICK_CONFIG, ["MODEL.RANK_LOSS.IMPLEMENTATION", "compiled"])
    with pytest.raises(ConfigError, match=r"IMPLEMENTATION 'compiled': the C library cannot"):
        check_rank_loss_implementation(cfg)
    check_rank_loss_implementation(load_config(QUICK_CONFIG))  # "auto" stays valid


def test_config_key_names_a_path():
    check_rank_loss_implementation(load_config(QUICK_CONFIG,
                                               ["MODEL.RANK_LOSS.IMPLEMENTATION", "eager"]))
    cfg = load_config(QUICK_CONFIG, ["MODEL.RANK_LOSS.IMPLEMENTATION", "fast"])
    with pytest.raises(ConfigError, match=r"IMPLEMENTATION is 'fast'; choose one of 'auto'"):
        check_rank_loss_implementation(cfg)


def test_damaged_cache_file_is_built_again(fresh_build, monkeypatch):
    # built by another process (a library this process has loaded must not be overwritten)
    subprocess.run([sys.executable, "-c", "from rsloss_d2.losses import compiled; "
                    "assert compiled.library() is not None"], check=True)
    (built,) = (fresh_build / "kernels").glob("ranking_losses-*.so")
    damaged = fresh_build / "damaged"
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, built)
    lib = compiled.library()
    assert lib is not None and compiled.build_seconds() is not None
    assert built.read_bytes()[:4] == b"\x7fELF"
    logits, targets, _ = _large_case("ap", n=300, p=20)
    compiled.set_implementation("compiled")
    _assert_matches_reference("ap", logits, targets, None, 1e-9)
