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
