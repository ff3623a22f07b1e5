"""tools/diagnostics/count_host_syncs.py: sync warnings are counted per step and attributed to the innermost
rsloss_d2 (else detectron2) frame; other warnings pass through. The CUDA part
(``torch.cuda.set_sync_debug_mode``) is exercised on a GPU machine; here the warnings that torch
issues in that mode are raised by hand from code compiled under package-like file names."""
import os
import sys
import warnings

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tools", "diagnostics"))
import count_host_syncs as chs  # noqa: E402


def _compiled(path, src):
    namespace = {"warnings": warnings, "MSG": chs.SYNC_MESSAGE}
    exec(compile(src, path, "exec"), namespace)
    return namespace


def test_counts_per_step_and_owner():
    d2 = _compiled(os.path.join("/x", "detectron2", "layers", "fake.py"),
                   "def d2_op():\n    warnings.warn('op ' + MSG)\n")
    rs = _compiled(os.path.join("/y", "rsloss_d2", "modeling", "head.py"),
                   "def head(d2_op, n):\n"
                   "    for _ in range(n):\n"
                   "        warnings.warn('x ' + MSG)\n"
                   "    d2_op()\n")
    counter = chs.SyncCounter(cuda=False, capture_stderr=False)
    with counter:
        for n in (2, 4):
            counter.new_step()
            rs["head"](d2["d2_op"], n)      # n syncs on line 3, one inside a detectron2 call
            d2["d2_op"]()                   # one sync of detectron2's own
    per_owner, sites = counter.summary()
    # the detectron2 op called from the rsloss_d2 head counts for detectron2 (innermost frame)
    assert per_owner["rsloss_d2"] == (3.0, 2, 4)
    assert per_owner["detectron2"] == (2.0, 2, 2)
    assert per_owner["other"] == (0.0, 0, 0)
    by_site = {s: m for _, s, m in sites}
    rel = os.path.join("rsloss_d2", "modeling", "head.py")
    assert by_site[f"{rel}:3 head"] == 3.0
    assert f"{rel}:4 head" not in by_site
    assert by_site[os.path.join("detectron2", "layers", "fake.py") + ":2 d2_op"] == 2.0
    assert sites[0][0] == "rsloss_d2"  # rsloss_d2 sites listed first
    report = chs.format_report("cfg.yaml", counter)
    assert "over 2 steps" in report and f"{rel}:3 head" in report


def test_backward_thread_lines_on_stderr_are_counted_per_step(capfd):
    """Syncs on the autograd threads reach only fd 2 (no Python stack): counted as "autograd"
    in the step that printed them; other stderr output is given back."""
    line = b"[W1129 CUDAFunctions.cpp:162] Warning: " + chs.SYNC_MESSAGE.encode() + b" (f)\n"
    counter = chs.SyncCounter(cuda=False, capture_stderr=True)
    with counter:
        for n in (1, 3):
            counter.new_step()
            for _ in range(n):
                os.write(2, line)
            os.write(2, b"unrelated diagnostic\n")
    per_owner, _ = counter.summary()
    assert per_owner["autograd"] == (2.0, 1, 3)
    err = capfd.readouterr().err
    assert err.count("unrelated diagnostic") == 2 and chs.SYNC_MESSAGE not in err


def test_other_warnings_pass_through_and_are_not_counted():
    counter = chs.SyncCounter(cuda=False, capture_stderr=False)
    with pytest.warns(UserWarning, match="unrelated"):
        with counter:
            counter.new_step()
            warnings.warn("unrelated")
    assert counter.summary()[0]["rsloss_d2"] == (0.0, 0, 0)
    assert sum(counter.counts[0].values()) == 0


def test_cli_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(chs.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        chs.main(["--config-files", "x.yaml"])
    assert "needs CUDA" in capsys.readouterr().err
