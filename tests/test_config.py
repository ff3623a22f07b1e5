"""add_rsloss_config: a renamed key set in a yaml or on the command line fails with a KeyError
that names its new key (no silent alias); the new keys exist and merge."""
import pytest
from detectron2.config import get_cfg

from rsloss_d2.config import RENAMED_KEYS, add_rsloss_config


def _cfg():
    cfg = get_cfg()
    add_rsloss_config(cfg)
    return cfg


def _new_key(value):
    return value if isinstance(value, str) else value[0]


def test_every_new_key_exists():
    cfg = _cfg()
    for new in map(_new_key, RENAMED_KEYS.values()):
        node = cfg
        for part in new.split("."):
            assert part in node, new
            node = node[part]
    assert cfg.MODEL.RANK_LOSS.ALRP_DELTA == cfg.MODEL.RANK_LOSS.AP_DELTA == 1.0


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_old_key_on_the_command_line_names_the_new_key(old):
    cfg = _cfg()
    with pytest.raises(KeyError, match=f"{old} was renamed to {_new_key(RENAMED_KEYS[old])}"):
        cfg.merge_from_list([old, "1"])


@pytest.mark.parametrize("old,yaml", [
    ("MODEL.RANKING_RETINANET.DELTA", "MODEL:\n  RANKING_RETINANET:\n    DELTA: 1.0\n"),
    ("MODEL.GOL.CLS_LOSS", "MODEL:\n  GOL:\n    CLS_LOSS: \"gumbel\"\n"),
])
def test_old_key_in_a_yaml_names_the_new_key(old, yaml, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml)
    cfg = _cfg()
    with pytest.raises(KeyError, match=f"{old} was renamed to {_new_key(RENAMED_KEYS[old])}"):
        cfg.merge_from_file(str(path))


def test_old_solov2_loss_node_in_a_yaml_fails_on_the_new_key(tmp_path):
    """MODEL.SOLOV2.LOSS is now the loss name itself: a yaml with the old LOSS node (TYPE,
    FOCAL_ALPHA, ...) fails on that key (yacs' type check), never merges silently."""
    path = tmp_path / "old.yaml"
    path.write_text("MODEL:\n  SOLOV2:\n    LOSS:\n      TYPE: \"rank_sort\"\n")
    cfg = _cfg()
    with pytest.raises(ValueError, match="for config key: MODEL.SOLOV2.LOSS$"):
        cfg.merge_from_file(str(path))
    assert cfg.MODEL.SOLOV2.LOSS == "focal_dice"


def test_new_keys_merge_and_config_can_be_extended_twice(tmp_path):
    cfg = _cfg()
    add_rsloss_config(cfg)  # a second call keeps the renamed-key table (no duplicate error)
    path = tmp_path / "new.yaml"
    path.write_text("MODEL:\n  SOLOV2:\n    LOSS: \"rank_sort\"\n    FOCAL_ALPHA: 0.3\n"
                    "  RANKING_RETINANET:\n    LOSS: \"ap\"\n  RANK_LOSS:\n    AP_DELTA: 0.5\n")
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.GOL.LOSS", "eql"])
    assert (cfg.MODEL.SOLOV2.LOSS, cfg.MODEL.SOLOV2.FOCAL_ALPHA) == ("rank_sort", 0.3)
    assert (cfg.MODEL.RANKING_RETINANET.LOSS, cfg.MODEL.RANK_LOSS.AP_DELTA) == ("ap", 0.5)
    assert cfg.MODEL.GOL.LOSS == "eql"
    with pytest.raises(KeyError, match="MODEL.GOL.CLS_LOSS was renamed to MODEL.GOL.LOSS"):
        cfg.clone().merge_from_list(["MODEL.GOL.CLS_LOSS", "eql"])
