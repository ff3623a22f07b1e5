"""tools/run_seeds.py: final metrics read back from metrics.json, finished runs reused, the
mean ± half-range table, row names of configs with overrides, the verdict rule, the grid choice,
the claim sections of the results file, parallel runs with their logs and failures, and one real
sweep of two tiny trainings."""
import json
import os
import re
import shlex
import sys

import pytest

from conftest import load_tool

RETINANET = os.path.join("configs", "shapes", "retinanet_R_18_FPN_quick.yaml")
# a training of 2 iterations at 64 px evaluated on the 16 validation images; score threshold 0 so
# that the barely trained model gives detections (hence numbers, not NaN)
TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
CELL = re.compile(r"^(\S+) ± (\S+) \(([^)]*)\)$")

# stands in for tools/train_net.py: AP = 50 - 100 |BASE_LR - PEAK| + BONUS + SEED / 10 (oLRP =
# 100 - AP), one metrics.json line appended per training; FAIL 1 exits with an error
FAKE_TRAIN = r"""
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print("fake training", sorted(args.items()))
if args.get("FAIL") == "1":
    print("boom: the fake run failed")
    sys.exit(3)
ap = (50 - 100 * abs(float(args["SOLVER.BASE_LR"]) - float(args.get("PEAK", 0.2)))
      + float(args.get("MODEL.BONUS", 0)) + int(args["SEED"]) / 10)
with open(os.path.join(args["OUTPUT_DIR"], "metrics.json"), "a") as f:
    f.write(json.dumps({"iteration": 9, "bbox/AP": ap, "bbox/oLRP": 100 - ap}) + "\n")
"""


def _tool():
    return load_tool("run_seeds")


def _no_training(tool, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("should not train")
    monkeypatch.setattr(tool, "train_command", refuse)


def _fake_training(tool, monkeypatch):
    monkeypatch.setattr(tool, "train_command", lambda run: [
        sys.executable, "-c", FAKE_TRAIN, "SEED", str(run.seed), "OUTPUT_DIR", run.output_dir]
        + list(run.opts))


def _fake_run(out, ap):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "bbox/AP": ap, "bbox/oLRP": 100 - ap}) + "\n")


def _section(text, claim):
    """The lines of the `## claim` section of a results file."""
    lines = text.splitlines()
    start = lines.index(f"## {claim}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return lines[start:end]


def _row(section, name):
    """The cells of the table row `name` after its name."""
    rows = [line for line in section if line.startswith(f"| {name} | ")]
    assert len(rows) == 1, (name, section)
    return [c.strip() for c in rows[0].strip("|").split("|")][1:]


def test_table_of_finished_runs(tmp_path, monkeypatch):
    tool = _tool()
    for name, aps in (("a", (40.0, 44.0, 42.0)), ("b", (50.0, 50.0, 53.0))):
        for seed, ap in zip((1, 2, 3), aps):
            _fake_run(str(tmp_path / name / f"seed{seed}"), ap)
    _no_training(tool, monkeypatch)  # finished runs are reused
    monkeypatch.setattr(tool, "write_section", lambda *a: pytest.fail("no --claim: no section"))
    results = tool.main(["--configs", "x/a.yaml", "y/b.yaml", "--out", str(tmp_path),
                         "--metrics", "bbox/AP", "bbox/oLRP", "segm/AP"])
    assert [r["bbox/AP"] for r in results["a"]] == [40.0, 44.0, 42.0]
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == ("| a | 3 | 42.0 ± 2.0 (40.0, 44.0, 42.0) | 58.0 ± 2.0 (60.0, 56.0, 58.0) "
                        "| – |")
    assert lines[3].startswith("| b | 3 | 51.0 ± 1.5 (50.0, 50.0, 53.0) |")


def test_failed_runs_are_cells_saying_failed():
    tool = _tool()
    ok = {"bbox/AP": 40.0}
    lines = tool.table({"a": [ok, None, {"bbox/AP": 42.0}], "b": [None, None]},
                       ["bbox/AP", "segm/AP"])
    assert lines[2] == "| a | 2 | 41.0 ± 1.0 (40.0, 42.0) | – |"
    assert lines[3] == "| b | 0 | failed | failed |"
    assert tool.failed_line([("a", 2), ("b", 1), ("b", 2)]) == \
        "Failed runs: a: seed 2; b: seed 1, 2."


@pytest.mark.parametrize("a, b, lower, expected", [
    ((40.0, 41.0, 42.0), (42.5, 43.0, 45.0), False, "reproduced"),
    ((40.0, 41.0, 42.0), (37.0, 38.0, 39.5), False, "not reproduced"),
    ((40.0, 41.0, 42.0), (41.5, 43.0, 45.0), False, "within noise"),
    ((40.0, 41.0, 42.0), (42.0, 43.0, 45.0), False, "within noise"),  # touching ranges
    ((70.0, 71.0, 72.0), (65.0, 66.0, 69.0), True, "reproduced"),     # oLRP: lower is better
    ((70.0, 71.0, 72.0), (72.5, 73.0, 74.0), True, "not reproduced"),
    ((70.0, 71.0, 72.0), (69.0, 70.5, 71.0), True, "within noise"),
    ((40.0, 41.0), (50.0, 51.0), False, "not enough seeds (2)"),
    ((40.0, 41.0, 42.0), (50.0,), False, "not enough seeds (1)"),
])
def test_verdict_rule(a, b, lower, expected):
    assert _tool().verdict(list(a), list(b), lower) == expected


def test_verdict_rows_follow_claim_order_and_skip_missing_metrics():
    tool = _tool()

    def runs(*aps):
        return [{"bbox/AP": ap, "bbox/oLRP": 100 - ap} for ap in aps]

    results = {"focal": runs(30, 31, 32), "ap_loss": runs(33, 34, 35), "alrp": runs(34, 36, 40)}
    rows = tool.verdict_rows(results, ["bbox/AP", "bbox/oLRP", "segm/AP"])
    assert rows == [("bbox/AP", "focal → ap_loss", "reproduced"),
                    ("bbox/AP", "ap_loss → alrp", "within noise"),
                    ("bbox/oLRP", "focal → ap_loss", "reproduced"),
                    ("bbox/oLRP", "ap_loss → alrp", "within noise")]
    assert tool.lower_is_better("bbox/oLRP") and tool.lower_is_better("segm/oLRP_loc")
    assert not tool.lower_is_better("bbox/AP50")


def test_row_and_folder_names_of_configs_with_overrides():
    tool = _tool()
    item = "configs/shapes/atss_R_18_FPN_quick.yaml SOLVER.BASE_LR 0.004"
    config, overrides = tool.parse_config(item)
    assert (config, overrides) == ("configs/shapes/atss_R_18_FPN_quick.yaml",
                                   ["SOLVER.BASE_LR", "0.004"])
    assert tool.row_name(config, overrides) == "atss_R_18_FPN_quick (BASE_LR 0.004)"
    assert tool.dir_name(config, overrides) == "atss_R_18_FPN_quick__BASE_LR_0.004"
    assert tool.row_name(config, []) == tool.dir_name(config, []) == "atss_R_18_FPN_quick"
    many = ["SOLVER.STEPS", "()", "INPUT.MIN_SIZE_TRAIN", "(64,96)", "MODEL.X", "-1"]
    assert tool.row_name(config, many) == \
        "atss_R_18_FPN_quick (STEPS () MIN_SIZE_TRAIN (64,96) X -1)"
    assert tool.dir_name(config, many) == \
        "atss_R_18_FPN_quick__STEPS_empty_MIN_SIZE_TRAIN_64-96_X_-1"
    with pytest.raises(ValueError):
        tool.parse_config("a.yaml SOLVER.BASE_LR")


def test_same_names_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        _tool().main(["--configs", "a/x.yaml", "b/x.yaml", "--out", str(tmp_path)])


def test_grid_choice():
    choose = _tool().choose_grid_value
    scores = {"0.01": 30.0, "0.02": 34.0, "0.04": 33.0}
    assert choose(scores, "bbox/AP") == "0.02"
    assert choose(scores, "bbox/oLRP") == "0.01"  # lower is better
    assert choose({"a": None, "b": float("nan"), "c": 1.0, "d": 5.0}, "bbox/oLRP") == "c"
    assert choose({"a": 2.0, "b": 2.0}, "bbox/AP") == "a"  # the first of equal ones
    assert choose({"a": None, "b": float("nan")}, "bbox/AP") is None


THREE = """# Claims table

Intro.

## first claim

first body
| a | b |

## second claim

old body

## third claim

third body
"""


def test_replace_the_middle_section_keeps_the_others_byte_identical():
    tool = _tool()
    new = tool.replace_section(THREE, "second claim", "## second claim\n\nnew body\n")
    before, after = THREE.split("## second claim")
    assert new.startswith(before)
    assert new.endswith(after[after.index("## third claim"):])
    assert "old body" not in new and new.count("## second claim") == 1
    assert new == THREE.replace("old body", "new body")
    # the last section: replaced up to the end of the file
    last = tool.replace_section(THREE, "third claim", "## third claim\n\nx\n")
    assert last == THREE.replace("third body", "x")


def test_append_and_create_sections(tmp_path):
    tool = _tool()
    appended = tool.replace_section(THREE, "fourth claim", "## fourth claim\n\nbody 4\n")
    assert appended == THREE + "\n## fourth claim\n\nbody 4\n"
    path = tmp_path / "docs" / "results.md"
    tool.write_section(str(path), "a claim", "## a claim\n\nbody\n")
    text = path.read_text()
    assert text.startswith("# Claims table\n") and "tools/run_seeds.py" in text
    assert text.endswith("\n\n## a claim\n\nbody\n")
    header = text[:text.index("## a claim")]
    tool.write_section(str(path), "b claim", "## b claim\n\nB\n")
    tool.write_section(str(path), "a claim", "## a claim\n\nbody 2\n")
    assert path.read_text() == header + "## a claim\n\nbody 2\n\n## b claim\n\nB\n"


def test_grid_then_seeds_in_parallel(tmp_path, monkeypatch, capsys):
    tool = _tool()
    _fake_training(tool, monkeypatch)
    results = tmp_path / "results.md"
    argv = ["--configs", "x/a.yaml PEAK 0.2", "x/b.yaml PEAK 0.3 MODEL.BONUS 10",
            "--grid", "SOLVER.BASE_LR", "0.1", "0.2", "0.3", "--seeds", "1", "2", "3",
            "--jobs", "2", "--metrics", "bbox/AP", "bbox/oLRP", "--claim", "b beats a",
            "--results", str(results), "--out", str(tmp_path / "out"), "--opts", "MODEL.BONUS", "0"]
    tool.main(argv)
    out = capsys.readouterr().out
    assert out.count("started ") == 10 and out.count("finished ") == 10  # 6 grid + 2 x 2 seeds
    section = _section(results.read_text(), "b beats a")
    text = "\n".join(section)
    assert "Grid over `SOLVER.BASE_LR` (seed 1, bbox/AP, higher is better):" in text
    assert _row(section, "a (PEAK 0.2)") == ["40.1", "**50.1**", "40.1"]
    assert _row(section, "b (PEAK 0.3 BONUS 10)") == ["40.1", "50.1", "**60.1**"]
    assert "Chosen: a (PEAK 0.2): 0.2; b (PEAK 0.3 BONUS 10): 0.3." in text
    a, b = "a (PEAK 0.2 BASE_LR 0.2)", "b (PEAK 0.3 BONUS 10 BASE_LR 0.3)"
    assert _row(section, a)[1] == "50.2 ± 0.1 (50.1, 50.2, 50.3)"
    assert _row(section, b)[1:] == ["60.2 ± 0.1 (60.1, 60.2, 60.3)",
                                    "39.8 ± 0.1 (39.9, 39.8, 39.7)"]
    assert f"| bbox/AP | {a} → {b} | reproduced |" in section
    assert f"| bbox/oLRP | {a} → {b} | reproduced |" in section
    assert section[2:5] == ["```bash", ".venv/bin/python tools/run_seeds.py " + shlex.join(argv),
                            "```"]
    assert "--configs 'x/a.yaml PEAK 0.2' 'x/b.yaml PEAK 0.3 MODEL.BONUS 10' --grid" in text
    # the grid's run at the chosen value is the first seed's run: trained once
    chosen = tmp_path / "out" / "b__PEAK_0.3_BONUS_10_BASE_LR_0.3"
    assert len((chosen / "seed1" / "metrics.json").read_text().splitlines()) == 1
    assert sorted(os.listdir(chosen)) == ["seed1", "seed2", "seed3"]
    assert "fake training" in (chosen / "seed2" / "run.log").read_text()


def test_failed_runs_are_reported_and_exit_nonzero(tmp_path, monkeypatch, capsys):
    tool = _tool()
    _fake_training(tool, monkeypatch)
    results = tmp_path / "results.md"
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--configs", "x/a.yaml", "x/b.yaml FAIL 1", "--seeds", "1", "2", "3",
                   "--jobs", "2", "--metrics", "bbox/AP", "--claim", "c", "--results",
                   str(results), "--out", str(tmp_path / "out"), "--opts", "SOLVER.BASE_LR",
                   "0.2"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert out.count("FAILED   b (FAIL 1) seed") == 3 and "boom: the fake run failed" in out
    section = _section(results.read_text(), "c")
    assert _row(section, "a")[1] == "50.2 ± 0.1 (50.1, 50.2, 50.3)"
    assert _row(section, "b (FAIL 1)") == ["0", "failed"]
    assert "Failed runs: b (FAIL 1): seed 1, 2, 3." in section
    assert not any(line.startswith("| bbox/AP | a →") for line in section)
    assert "No verdict: no two consecutive configs both have values of a verdict metric." in section


def test_real_sweep_two_configs_two_seeds(shapes_root, tmp_path, monkeypatch):
    """Two tiny RetinaNet trainings per config, two at once; a second call trains nothing."""
    tool = _tool()
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_root)
    results, out = tmp_path / "results.md", tmp_path / "out"
    configs = [f"{RETINANET} SOLVER.BASE_LR 0.01", f"{RETINANET} SOLVER.BASE_LR 0.02"]
    names = ["retinanet_R_18_FPN_quick (BASE_LR 0.01)", "retinanet_R_18_FPN_quick (BASE_LR 0.02)"]
    argv = ["--configs"] + configs + ["--seeds", "1", "2", "--jobs", "2", "--threads", "1",
                                      "--metrics", "bbox/AP", "bbox/oLRP", "segm/AP",
                                      "--claim", "test claim", "--results", str(results),
                                      "--out", str(out), "--opts"] + TINY
    first = tool.main(argv)
    section = _section(results.read_text(), "test claim")
    assert section[2] == "```bash" and section[3].startswith(
        ".venv/bin/python tools/run_seeds.py --configs "
        "'configs/shapes/retinanet_R_18_FPN_quick.yaml SOLVER.BASE_LR 0.01' ")
    assert section[3].endswith("SOLVER.STEPS '()' SOLVER.IMS_PER_BATCH 2 SOLVER.CHECKPOINT_PERIOD "
                               "1000 INPUT.MIN_SIZE_TRAIN '(64,)' INPUT.MAX_SIZE_TRAIN 96 "
                               "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 96 "
                               "DATALOADER.NUM_WORKERS 0 TEST.EVAL_PERIOD 0 "
                               "MODEL.RETINANET.SCORE_THRESH_TEST 0.0")
    assert re.fullmatch(r"Run on \d{4}-\d\d-\d\d \(UTC\) at commit [0-9a-f]{4,}"
                        r"( \+ uncommitted changes)?\.", section[6])
    for name in names:
        seeds, ap, olrp, segm = _row(section, name)
        assert seeds == "2" and segm == "–"
        for cell, metric in ((ap, "bbox/AP"), (olrp, "bbox/oLRP")):
            mean, spread, values = CELL.match(cell).groups()
            values = [float(v) for v in values.split(", ")]
            assert values == pytest.approx([round(r[metric], 1) for r in first[name]])
            assert 0 <= min(values) and max(values) <= 100
            assert float(mean) == pytest.approx(sum(values) / 2, abs=0.051)
            assert float(spread) == pytest.approx((max(values) - min(values)) / 2, abs=0.051)
    pair = " → ".join(names)
    assert f"| bbox/AP | {pair} | not enough seeds (2) |" in section
    assert f"| bbox/oLRP | {pair} | not enough seeds (2) |" in section
    assert not any(line.startswith("| segm/AP |") for line in section)
    dirs = [out / d / f"seed{s}" for d in ("retinanet_R_18_FPN_quick__BASE_LR_0.01",
                                           "retinanet_R_18_FPN_quick__BASE_LR_0.02")
            for s in (1, 2)]
    assert all("copypaste: Task: bbox" in (d / "run.log").read_text() for d in dirs)
    mtimes = [(d / "metrics.json").stat().st_mtime_ns for d in dirs]

    _no_training(tool, monkeypatch)
    second = tool.main(argv)
    assert {n: [[r[m] for m in ("bbox/AP", "bbox/oLRP")] for r in runs]
            for n, runs in second.items()} == \
        {n: [[r[m] for m in ("bbox/AP", "bbox/oLRP")] for r in runs] for n, runs in first.items()}
    assert [(d / "metrics.json").stat().st_mtime_ns for d in dirs] == mtimes
    again = _section(results.read_text(), "test claim")
    assert [line for line in again if line.startswith("| ")] == \
        [line for line in section if line.startswith("| ")]
    assert results.read_text().count("## test claim") == 1


def test_ranking_quality_cells_keep_three_decimals():
    tool = _tool()
    runs = {"a": [{"bbox/AP": 33.94, "bbox/spearman": 0.4631},
                  {"bbox/AP": 35.0, "bbox/spearman": 0.4312}]}
    row = tool.table(runs, ["bbox/AP", "bbox/spearman"])[2]
    assert row == "| a | 2 | 34.5 ± 0.5 (33.9, 35.0) | 0.447 ± 0.016 (0.463, 0.431) |"


def test_weights_from_evaluates_the_earlier_runs(tmp_path, monkeypatch, capsys):
    """--weights-from: eval-only runs of the same configs / grid / seeds' final weights, with
    this call's options; the grid is chosen again on these numbers."""
    tool = _tool()
    commands, real_command = [], tool.train_command

    def fake_eval(run):
        commands.append(real_command(run))
        return [sys.executable, "-c", FAKE_TRAIN, "SEED", str(run.seed), "OUTPUT_DIR",
                run.output_dir] + list(run.opts)
    monkeypatch.setattr(tool, "train_command", fake_eval)
    trained, out = tmp_path / "trained", tmp_path / "thr0"
    tool.main(["--configs", "x/a.yaml PEAK 0.2", "--grid", "SOLVER.BASE_LR", "0.1", "0.2",
               "--seeds", "1", "2", "--metrics", "bbox/AP", "--out", str(out),
               "--weights-from", str(trained), "--opts", "MODEL.SCORE_THRESH", "0.0"])
    assert len(commands) == 3  # 2 grid runs + the second seed
    for cmd in commands:
        assert "--eval-only" in cmd and "--resume" not in cmd
        i = cmd.index("MODEL.WEIGHTS")
        weights = cmd[i + 1]
        run_folder = os.path.relpath(os.path.dirname(weights), str(trained))
        assert os.path.basename(weights) == "model_final.pth"
        assert cmd[cmd.index("OUTPUT_DIR") + 1] == str(out / run_folder)
        assert cmd[cmd.index("MODEL.SCORE_THRESH") + 1] == "0.0"
    folders = sorted(os.path.relpath(os.path.dirname(c[c.index("MODEL.WEIGHTS") + 1]),
                                     str(trained)) for c in commands)
    assert folders == ["a__PEAK_0.2_BASE_LR_0.1/seed1", "a__PEAK_0.2_BASE_LR_0.2/seed1",
                       "a__PEAK_0.2_BASE_LR_0.2/seed2"]


def _versions_line(results, claim):
    return _section(results.read_text(), claim)[6]


def test_each_run_records_its_commit_and_reused_runs_are_named(tmp_path, monkeypatch, capsys):
    """A started run records the code version in its folder; a section whose runs were all made
    at the current version says "Run on ... at commit V"; one that reuses runs made at other
    commits (or without a record) says which, with counts."""
    tool = _tool()
    _fake_training(tool, monkeypatch)
    monkeypatch.setattr(tool, "code_version", lambda ignore=None: "c0ffee1")
    results, out = tmp_path / "results.md", tmp_path / "out"
    argv = ["--configs", "x/a.yaml", "x/b.yaml MODEL.BONUS 5", "--seeds", "1", "2", "3",
            "--metrics", "bbox/AP", "--claim", "c", "--results", str(results), "--out", str(out),
            "--opts", "SOLVER.BASE_LR", "0.2"]
    tool.main(argv)
    for folder in ("a", "b__BONUS_5"):
        for seed in (1, 2, 3):
            assert (out / folder / f"seed{seed}" / "code_version.txt").read_text() == "c0ffee1\n"
    assert re.fullmatch(r"Run on \d{4}-\d\d-\d\d \(UTC\) at commit c0ffee1\.",
                        _versions_line(results, "c"))

    (out / "a" / "seed2" / "code_version.txt").write_text("1234abc + uncommitted changes\n")
    (out / "b__BONUS_5" / "seed3" / "code_version.txt").unlink()
    monkeypatch.setattr(tool, "code_version", lambda ignore=None: "beef222")
    capsys.readouterr()
    tool.main(argv)
    assert capsys.readouterr().out.count("reused ") == 6
    assert _versions_line(results, "c").endswith(
        "(UTC) at commit beef222; runs made at commit c0ffee1 (4 runs), 1234abc + uncommitted "
        "changes (1 run), not recorded (1 run).")


def test_weights_from_names_the_checkpoints_commits(tmp_path, monkeypatch):
    tool = _tool()
    _fake_training(tool, monkeypatch)
    monkeypatch.setattr(tool, "code_version", lambda ignore=None: "c0ffee1")
    trained, out, results = tmp_path / "trained", tmp_path / "thr0", tmp_path / "results.md"
    for seed in (1, 2, 3):
        (trained / "a" / f"seed{seed}").mkdir(parents=True)
        (trained / "a" / f"seed{seed}" / "code_version.txt").write_text("aaaa111\n")
    tool.main(["--configs", "x/a.yaml", "--seeds", "1", "2", "3", "--metrics", "bbox/AP",
               "--claim", "c", "--results", str(results), "--out", str(out), "--weights-from",
               str(trained), "--opts", "SOLVER.BASE_LR", "0.2"])
    assert _versions_line(results, "c").endswith(
        "at commit c0ffee1; runs made at commit c0ffee1 (3 runs); their checkpoints trained at "
        "commit aaaa111 (3 runs).")
