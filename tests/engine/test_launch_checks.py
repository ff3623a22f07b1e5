"""The checks of rsloss_d2.engine made before any process starts: each failing case is one
`train_net.py: error:` line naming the key, file or option (in-process through
`check_before_launch`, the command line once)."""
import os

import pytest
import torch

from rsloss_d2 import engine
from rsloss_d2.data.config_checks import ConfigDataError
from rsloss_d2.engine import ConfigError
from rsloss_d2.engine.checkpoint import CheckedCheckpointer, CheckpointError

from conftest import QUICK_CONFIG, REPO, run_train_net

ATSS_CONFIG = os.path.join(REPO, "configs", "shapes", "rs_atss_R_18_FPN_quick.yaml")


def _check(argv, root, monkeypatch):
    """check_before_launch of the command line `argv` (datasets under `root`)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    args = engine.argument_parser().parse_args(argv)
    return engine.check_before_launch(args)


def test_option_after_the_config_pairs_says_where_it_goes(tiny_shapes, monkeypatch):
    with pytest.raises(ConfigError, match=r"^--dataset comes after the KEY VALUE config pairs.*"
                                          r"put --dataset .* before the first KEY VALUE pair"):
        _check(["--config-file", QUICK_CONFIG, "SOLVER.BASE_LR", "0.01",
                "--dataset", "mine", "a.json", "images"], tiny_shapes, monkeypatch)


@pytest.mark.parametrize("value, expected", [
    ("abc", r"^SOLVER\.BASE_LR abc on the command line: expects a float .* got a str"),
    ("1000", r"^SOLVER\.BASE_LR 1000 on the command line: expects a float .* got an int; "
             r"write 1000\.0"),
])
def test_value_of_the_wrong_type_names_the_key(value, expected, tiny_shapes, monkeypatch):
    with pytest.raises(ConfigError, match=expected):
        _check(["--config-file", QUICK_CONFIG, "SOLVER.BASE_LR", value], tiny_shapes,
               monkeypatch)


def test_wrong_type_in_a_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{QUICK_CONFIG}"\nSOLVER:\n  MAX_ITER: 1.5\n')
    with pytest.raises(ConfigError, match=rf"^SOLVER\.MAX_ITER 1\.5 in {bad}: expects an? int"):
        engine.load_config(str(bad))


def test_odd_number_of_config_items_is_an_error(tiny_shapes, monkeypatch):
    with pytest.raises(ConfigError, match="odd number of items"):
        _check(["--config-file", QUICK_CONFIG, "SOLVER.BASE_LR"], tiny_shapes, monkeypatch)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--config-file '.*nope.yaml': no such file"):
        engine.load_config(str(tmp_path / "nope.yaml"))


def test_unknown_loss_name_names_the_key_and_the_choices(tiny_shapes, monkeypatch):
    key = "MODEL.RANKING_RETINANET.LOSS"
    with pytest.raises(ConfigError, match=r"^MODEL\.RANKING_RETINANET\.LOSS is 'rank_sortt', "
                                          r"which is not a loss of this family; choose one of"):
        _check(["--config-file", ATSS_CONFIG, key, "rank_sortt"], tiny_shapes, monkeypatch)
    with pytest.raises(ConfigError) as e:
        _check(["--config-file", ATSS_CONFIG, key, "rank_sortt"], tiny_shapes, monkeypatch)
    assert all(repr(name) in str(e.value) for name in engine.LOSS_CHOICES[key])


def test_loss_table_covers_keys_of_the_config():
    """Every key of the table exists (a renamed key must be renamed here too) and its default
    is one of its names."""
    cfg = engine.load_config(QUICK_CONFIG)
    for key, names in engine.LOSS_CHOICES.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node in names, (key, node, names)
    for key in engine.LOSS_CHOICES:  # each one is checked
        bad = engine.load_config(QUICK_CONFIG, [key, "no_such_loss"])
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            engine.checks.check_loss_names(bad)


def test_batch_not_divisible_by_the_processes(tiny_shapes, monkeypatch):
    with pytest.raises(ConfigError, match=r"^SOLVER\.IMS_PER_BATCH 3 is not divisible by the 2 "
                                          r"processes \(--num-gpus x --num-machines\)"):
        _check(["--config-file", QUICK_CONFIG, "--num-gpus", "2", "SOLVER.IMS_PER_BATCH", "3"],
               tiny_shapes, monkeypatch)
    with pytest.raises(ConfigError, match=r"IMS_PER_BATCH 4 is not divisible by the 3 processes"):
        _check(["--config-file", QUICK_CONFIG, "--num-machines", "3", "--machine-rank", "0",
                "SOLVER.IMS_PER_BATCH", "4"], tiny_shapes, monkeypatch)


def test_eval_only_with_a_missing_weights_file(tiny_shapes, monkeypatch, tmp_path):
    missing = str(tmp_path / "output" / "model_final.pth")
    with pytest.raises(ConfigError, match=rf"^MODEL\.WEIGHTS {missing}: no such file"):
        _check(["--config-file", QUICK_CONFIG, "--eval-only", "MODEL.WEIGHTS", missing],
               tiny_shapes, monkeypatch)
    with pytest.raises(ConfigError, match=r"^--eval-only needs weights: MODEL\.WEIGHTS is empty"):
        _check(["--config-file", QUICK_CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path)],
               tiny_shapes, monkeypatch)


def _tiny_model_checkpoint(path, iteration):
    torch.save({"model": {"w": torch.zeros(3)}, "iteration": iteration}, path)


def test_new_run_over_a_finished_one_asks_for_resume_or_overwrite(tiny_shapes, monkeypatch,
                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _tiny_model_checkpoint(out / "model_0000004.pth", 4)
    _tiny_model_checkpoint(out / "model_final.pth", 9)
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "metrics.json").write_text('{"iteration": 9}\n')
    argv = ["--config-file", QUICK_CONFIG, "OUTPUT_DIR", str(out)]
    with pytest.raises(ConfigError, match=rf"^OUTPUT_DIR {out} holds a finished run "
                                          r"\(model_final.pth\): add --resume .* --overwrite"):
        _check(argv, tiny_shapes, monkeypatch)
    _check(["--resume"] + argv, tiny_shapes, monkeypatch)  # continue it: no complaint
    assert sorted(os.listdir(out)) == ["last_checkpoint", "metrics.json", "model_0000004.pth",
                                       "model_final.pth"]
    # a run that fails any other check deletes nothing
    with pytest.raises(ConfigDataError):
        _check(["--overwrite"] + argv + ["MODEL.ROI_HEADS.NUM_CLASSES", "3"], tiny_shapes,
               monkeypatch)
    assert len(os.listdir(out)) == 4
    capsys.readouterr()
    _check(["--overwrite"] + argv, tiny_shapes, monkeypatch)
    assert os.listdir(out) == []  # nothing of the old run left to mix with the new one
    assert "--overwrite: removed 4 files of an earlier run" in capsys.readouterr().out
    _check(argv, tiny_shapes, monkeypatch)  # now a plain run starts


def test_resume_without_a_checkpoint_warns(tiny_shapes, monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "typo")
    _check(["--config-file", QUICK_CONFIG, "--resume", "OUTPUT_DIR", out], tiny_shapes,
           monkeypatch)
    assert (f"train_net.py: warning: --resume: no checkpoint in OUTPUT_DIR {out} (no "
            f"last_checkpoint file): starting a new run from scratch") in capsys.readouterr().out


def test_new_run_over_an_unfinished_one_warns(tiny_shapes, monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _tiny_model_checkpoint(out / "model_0000004.pth", 4)
    (out / "last_checkpoint").write_text("model_0000004.pth")
    _check(["--config-file", QUICK_CONFIG, "OUTPUT_DIR", str(out)], tiny_shapes, monkeypatch)
    assert (f"train_net.py: warning: OUTPUT_DIR {out} holds checkpoints of an unfinished run "
            f"(last: model_0000004.pth): starting a new run over it; --resume continues it"
            ) in capsys.readouterr().out


def test_last_checkpoint_naming_a_missing_file(tiny_shapes, monkeypatch, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _tiny_model_checkpoint(out / "model_0000004.pth", 4)
    (out / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(ConfigError, match=rf"^checkpoint {out / 'model_0000009.pth'} cannot be "
                                          rf"read \(FileNotFoundError: .* The newest intact "
                                          rf"checkpoint is {out / 'model_0000004.pth'}"):
        _check(["--config-file", QUICK_CONFIG, "--resume", "OUTPUT_DIR", str(out)], tiny_shapes,
               monkeypatch)


def test_truncated_last_checkpoint_names_the_previous_intact_one(tiny_shapes, monkeypatch,
                                                                 tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for it in (4, 9):
        _tiny_model_checkpoint(out / f"model_{it:07d}.pth", it)
    _tiny_model_checkpoint(out / "model_0000014.pth", 14)
    last = out / "model_0000014.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # killed while saving
    (out / "last_checkpoint").write_text("model_0000014.pth")
    expected = (rf"^checkpoint {last} cannot be read.* The newest intact checkpoint is "
                rf"{out / 'model_0000009.pth'}: .*echo model_0000009.pth > "
                rf"{out / 'last_checkpoint'}")
    with pytest.raises(ConfigError, match=expected):
        _check(["--config-file", QUICK_CONFIG, "--resume", "OUTPUT_DIR", str(out)], tiny_shapes,
               monkeypatch)
    # the same message where the file is read (a checkpoint damaged after the launch)
    checkpointer = CheckedCheckpointer(torch.nn.Linear(1, 3), save_dir=str(out))
    with pytest.raises(CheckpointError, match=expected):
        checkpointer.load(str(last))


def test_errors_are_one_line_on_the_command_line(tmp_path):
    proc = run_train_net(["--config-file", QUICK_CONFIG, "OUTPUT_DIR", str(tmp_path / "out"),
                          "SOLVER.BASE_LR", "0.01", "--dataset", "mine", "a.json", "images"],
                         str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: --dataset comes after the KEY VALUE"), last
    assert not os.path.exists(tmp_path / "out")
