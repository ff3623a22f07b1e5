"""tools/benchmarks/benchmark_eval.py runs end to end on a small set and agrees with pycocotools."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_eval_small(capsys):
    spec = importlib.util.spec_from_file_location(
        "benchmark_eval", os.path.join(REPO, "tools", "benchmarks", "benchmark_eval.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--images", "30", "--classes", "4", "--dets", "20", "--check"])
    out = capsys.readouterr().out
    assert "pycocotools COCOeval evaluate()+accumulate()" in out
    assert "rsloss_d2 compute_olrp" in out
    assert "max |difference| of oLRP (per class and the four area means) = 0\n" in out
