"""tools/plot_ranking_quality.py: two runs' inference folders -> one PNG, with the numbers of
ranking_quality on each run's results."""
import json

import matplotlib.image
import numpy as np
import pytest

from conftest import load_tool
from rsloss_d2.evaluation import ranking_quality
from rsloss_d2.evaluation.synthetic import make_synthetic_coco


def _tool():
    return load_tool("plot_ranking_quality")


def test_two_runs_side_by_side(tmp_path, capsys):
    gt, dets = make_synthetic_coco(num_images=30, num_classes=3, dets_per_image=20, seed=0)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    rng = np.random.default_rng(0)
    shuffled = [dict(d, score=float(rng.random())) for d in dets]  # scores unrelated to IoU
    runs = {}
    for name, res in (("A", dets), ("B", shuffled)):
        folder = tmp_path / name / "inference" / "my_val"
        folder.mkdir(parents=True)
        (folder / "coco_instances_results.json").write_text(json.dumps(res))
        runs[name] = res
    out = tmp_path / "plots" / "rq.png"
    _tool().main(["--gt", str(gt_path), "--run", f"A={tmp_path / 'A'}",
                  "--run", f"B={tmp_path / 'B' / 'inference' / 'my_val'}", "--out", str(out)])
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[1] > img.shape[0]  # two panels side by side
    text = capsys.readouterr().out
    for name, res in runs.items():
        want = ranking_quality(str(gt_path), res)
        assert f"{name}: spearman {want['spearman']:.4f}" in text
        assert f"num_tp {want['num_tp']}" in text
    a = ranking_quality(str(gt_path), runs["A"])["spearman"]
    b = ranking_quality(str(gt_path), runs["B"])["spearman"]
    assert a > b  # the synthetic detector's scores follow its boxes' quality


def test_run_spec_errors(tmp_path):
    tool = _tool()
    with pytest.raises(SystemExit, match="no results json"):
        tool.find_results(str(tmp_path))
    with pytest.raises(SystemExit, match="NAME=PATH"):
        tool.main(["--gt", str(tmp_path / "x.json"), "--run", "nopath"])
