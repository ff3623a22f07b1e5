"""tools/benchmarks/benchmark_losses.py runs end to end on small sizes and reports both paths of
the ranking losses and the build time of the compiled one."""
from conftest import load_tool


def test_benchmark_losses_small(capsys):
    mod = load_tool("benchmark_losses")
    mod.main(["--sizes", "20x300", "--repeats", "1", "--skip-loop-above", "5", "--devices", "cpu"])
    out = capsys.readouterr().out
    assert "compiled path: built in " in out
    header = next(line for line in out.splitlines() if line.startswith("| device"))
    for column in ("ours ms", "eager ms", "ours/focal", "eager/focal", "eager ops"):
        assert f" {column} |" in header
    rows = [line.split("|") for line in out.splitlines() if line.startswith("|    cpu")]
    assert {r[4].strip() for r in rows} == {"rs", "alrp", "ap"}
    names = [c.strip() for c in header.split("|")]
    for r in rows:  # one C call on the CPU against the PyTorch path's tens of operations
        cells = dict(zip(names, (c.strip() for c in r)))
        assert int(cells["ops"]) <= 10 < int(cells["eager ops"])
