"""The config loader: defaults < YAML < command-line overrides, checks and clear errors."""

from dataclasses import dataclass, field

import pytest

from tempnet.config import load_config, parse_overrides, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    """learning rate"""
    betas: tuple = (0.9, 0.95)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    path: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_layers_merge_in_order(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("steps: 20\noptim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, yml, ["optim.lr=2", "name=x", "path=/a/b"])
    assert cfg == Cfg(name="x", steps=20, path="/a/b", optim=Optim(lr=2.0))
    assert isinstance(cfg.optim.lr, float) and cfg.optim.betas == (0.9, 0.95)
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg


def test_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optim.lrr'\]"):
        load_config(Cfg, None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="optim.lr must be positive"):
        load_config(Cfg, None, ["optim.lr=-1"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_overrides(["steps"])


@dataclass
class Renamed(Cfg):
    RENAMED = {"optim.rate": "optim.lr", "old.steps": "steps"}


def test_a_renamed_key_is_one_error_naming_its_new_name(tmp_path):
    from tempnet.errors import ConfigError

    yml = tmp_path / "old.yaml"
    yml.write_text("optim:\n  rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"^config key optim.rate was renamed to optim.lr$"):
        load_config(Renamed, yml)
    with pytest.raises(ConfigError, match=r"^config key old.steps was renamed to steps$"):
        load_config(Renamed, None, ["old.steps=3"])
    assert load_config(Renamed, None, ["optim.lr=0.1"]).optim.lr == 0.1  # the new name loads


def test_derive_makes_a_new_checked_config_and_leaves_the_loaded_one_alone():
    from tempnet.config import config_to_dict, derive

    cfg = load_config(Cfg, None, ["optim.lr=0.5"])
    before = config_to_dict(cfg)
    new = derive(cfg, {"optim": {"lr": 0.25}})
    assert new.optim.lr == 0.25 and new.steps == cfg.steps and config_to_dict(cfg) == before
    with pytest.raises(ValueError, match="optim.lr must be positive"):  # the section's checks run again
        derive(cfg, {"optim": {"lr": -1.0}})


def test_with_defaults_changes_defaults_only():
    from tempnet.config import with_defaults

    @dataclass
    class Mine(with_defaults(Optim, lr=0.5)):
        eps: float = 1e-8

    assert Mine().lr == 0.5 and Mine().betas == (0.9, 0.95) and Optim().lr == 1e-3
    assert [f for f in Mine.__dataclass_fields__] == ["lr", "betas", "eps"]
    with pytest.raises(ValueError, match="optim.lr must be positive"):  # the base's checks
        load_config(Mine, None, ["lr=0"])
    with pytest.raises(TypeError, match="no field"):
        with_defaults(Optim, rate=0.5)
