import pytest

from avatarjax.config import load_config
from avatarjax.errors import ConfigError
from tests.conftest import TINY_LM, tiny_config


def test_loads_with_typed_sections():
    cfg = tiny_config()
    assert cfg.task == "lm"
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert cfg.model.dim == 64
    assert cfg.mesh.rules == "fsdp_tp"


def test_overrides_parse_by_type():
    cfg = tiny_config("--config.train.steps=3", "--config.optim.lr=0.5", "--config.log.tensorboard=true",
                      "--config.mesh.rules_override=(('length', ('sequence',)),)", "--config.data.path=/x")
    assert cfg.train.steps == 3 and cfg.optim.lr == 0.5 and cfg.log.tensorboard is True
    assert cfg.mesh.rules_override == (("length", ("sequence",)),)
    assert cfg.data.path == "/x"


def test_override_of_key_absent_from_file_but_in_schema():
    cfg = tiny_config("--config.train.ema_decay=0.99")
    assert cfg.train.ema_decay == 0.99


@pytest.mark.parametrize("override, message", [
    ("--config.trian.steps=3", "unknown config key 'trian.steps': the nearest valid key is 'train.steps'"),
    ("--config.train.batchsize=3", "nearest valid key is 'train.batch_size'"),
    ("--config.model.dimm=3", "nearest valid key is 'model.dim'"),
])
def test_unknown_key_names_nearest(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(override)


def test_unknown_key_in_file_is_rejected(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(open(TINY_LM).read() + "\n_get = get_config\n"
                    "def get_config():\n    c = _get()\n    c.train.stpes = 4\n    return c\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.stpes': the nearest valid key is 'train.steps'"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("--config.train.steps=abc", "must be an integer"),
    ("--config.train.batch_size=6", None),
    ("--config.train.grad_accum=3", "must divide by train.grad_accum"),
    ("--config.optim.name=lion", "optim.name must be"),
    ("--config.mesh.rules=fsdq", "did you mean 'fsdp'"),
    ("--config.train.steps", "needs a value"),
    ("--config.task=lmm", "unknown task 'lmm': did you mean 'lm'"),
])
def test_bad_values(override, message):
    if message is None:
        tiny_config(override)
        return
    with pytest.raises(ConfigError, match=message):
        tiny_config(override)


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        load_config(path)


def test_round_trip_through_json():
    import json

    from avatarjax.config import config_from_dict

    cfg = tiny_config("--config.mesh.rules_override=(('length', ('sequence',)),)")
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
