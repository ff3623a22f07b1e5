"""The SOLO benchmark tools run and agree with their references (tiny sizes)."""
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(REPO, "tools", "benchmarks"))

import benchmark_inference  # noqa: E402
import benchmark_matrix_nms  # noqa: E402


def test_benchmark_matrix_nms_matches_loop(capsys):
    benchmark_matrix_nms.main(["--num-masks", "40", "--size", "24", "--repeat", "2",
                               "--device", "cpu"])
    out = capsys.readouterr().out
    diff = float(re.search(r"max \|difference\| on 40 masks: (\S+)", out).group(1))
    assert diff < 1e-5
    assert "per-pair Python loop" in out


def test_benchmark_inference_crowded_image(capsys):
    cfg = os.path.join(REPO, "configs", "shapes", "solov2_R_18_FPN_quick.yaml")
    ratio = benchmark_inference.main([
        "--config-a", cfg, "--config-b", cfg, "--crowded", "12", "--crowded-size", "64", "96",
        "--num-images", "2", "--warmup", "0", "--device", "cpu", "--peak-memory",
        "--opts-b", "MODEL.SOLOV2.SCORE_THR", "0.0", "MODEL.SOLOV2.MASK_THR", "0.3",
        "MODEL.SOLOV2.UPDATE_THR", "0.0", "MODEL.SOLOV2.MAX_PER_IMG", "7",
        "--opts", "MODEL.SOLOV2.NUM_GRIDS", "[8, 6, 4, 3, 2]",
    ])
    out = capsys.readouterr().out
    assert ratio > 0
    rows = [line for line in out.splitlines() if line.startswith("| A") or line.startswith("| B")]
    assert len(rows) == 2
    # model B keeps every cell × class as a candidate: exactly MAX_PER_IMG masks survive
    assert float(rows[1].split("|")[6]) == 7.0
