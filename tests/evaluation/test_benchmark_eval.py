"""tools/benchmarks/benchmark_eval.py runs end to end on small sets and agrees with pycocotools,
faster-coco-eval and lvis-api."""
from conftest import load_tool


def test_benchmark_eval_small(capsys):
    mod = load_tool("benchmark_eval")
    mod.main(["--images", "30", "--classes", "4", "--dets", "20", "--check", "--repeat", "1",
              "--lvis-images", "15", "--lvis-classes", "20", "--lvis-dets", "30"])
    out = capsys.readouterr().out
    for row in ("pycocotools COCOeval: AP", "faster-coco-eval COCOeval_faster (C++): AP",
                "rsloss_d2 evaluate_coco: AP + oLRP + ranking quality", "lvis-api LVISEval: AP",
                "rsloss_d2 evaluate_lvis: AP + oLRP + ranking quality"):
        assert f"| {row}" in out
    assert "max |difference| of AP..APl with pycocotools = 0, with faster-coco-eval = 0\n" in out
    assert "max |difference| of oLRP (per class and the four area means) = 0\n" in out
    # lvis-api and rsloss_d2 each see their own copy of the set, made from the seed: equal AP
    # shows both copies were the same set
    assert "max |difference| of the AP entries with lvis-api = 0\n" in out
    assert "peak resident memory with lvis-api: " in out
