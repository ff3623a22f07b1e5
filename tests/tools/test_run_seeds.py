"""tools/run_seeds.py: final metrics read back from metrics.json, finished runs reused, and the
mean ± half-range table."""
import json
import os

from test_demo_and_plots import _load_tool


def _fake_run(out, ap):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "bbox/AP": ap, "bbox/oLRP": 100 - ap}) + "\n")


def test_table_of_finished_runs(tmp_path, monkeypatch):
    tool = _load_tool("run_seeds")
    for name, aps in (("a", (40.0, 44.0, 42.0)), ("b", (50.0, 50.0, 53.0))):
        for seed, ap in zip((1, 2, 3), aps):
            _fake_run(str(tmp_path / name / f"seed{seed}"), ap)
    # finished runs are reused: no training is started
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("should not train")))
    results = tool.main(["--configs", "x/a.yaml", "y/b.yaml", "--out", str(tmp_path),
                         "--metrics", "bbox/AP", "bbox/oLRP", "segm/AP"])
    assert [r["bbox/AP"] for r in results["a"]] == [40.0, 44.0, 42.0]
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == "| a | 3 | 42.0 ± 2.0 (40.0, 44.0, 42.0) | 58.0 ± 2.0 (60.0, 56.0, 58.0) | – |"
    assert lines[3].startswith("| b | 3 | 51.0 ± 1.5 (50.0, 50.0, 53.0) |")
