"""One config vocabulary for both trainers: the `train` and `optim` fields both trees have are defined once
(tempnet.train.run_config), with one "off" value each; keys of earlier versions name their new key; a loaded
config is never changed by the trainer (the same one trains twice)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from helpers import REPO
from tempnet.config import config_to_dict, load_config
from tempnet.errors import ConfigError
from tempnet.train import clip_config, lm_config, run_config

TREES = ((lm_config.LMTrainConfig, REPO / "GPT_2" / "configs" / "debug.yaml"),
         (clip_config.BimodalConfig, REPO / "Bimodal-CL" / "configs" / "debug.yaml"))


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("base, lm, clip", [
    (run_config.BaseTrainConfig, lm_config.TrainConfig, clip_config.TrainConfig),
    (run_config.BaseOptimConfig, lm_config.OptimConfig, clip_config.OptimConfig),
])
def test_the_fields_both_trees_share_are_defined_once(base, lm, clip):
    assert issubclass(lm, base) and issubclass(clip, base)
    assert _names(lm) & _names(clip) == _names(base)  # a field both trees have lives in the shared class
    hints = [typing.get_type_hints(c) for c in (base, lm, clip)]
    for name in _names(base):  # with the shared class's type whatever the tree's default
        assert hints[0][name] == hints[1][name] == hints[2][name]


def test_resume_safe_fields_are_defined_once():
    shared = set(run_config.RESUME_SAFE)
    assert shared <= set(lm_config.RESUME_SAFE) and shared <= set(clip_config.RESUME_SAFE)
    train_fields = {f"train.{n}" for n in _names(run_config.BaseTrainConfig)}
    assert {k for k in set(lm_config.RESUME_SAFE) & set(clip_config.RESUME_SAFE) if k in train_fields} == shared


@pytest.mark.parametrize("cls, path", TREES, ids=("lm", "clip"))
def test_one_off_value_per_setting_in_both_trees(cls, path):
    cfg = load_config(cls, path, ["train.save_every=0", "train.keep_last=0", "train.stop_after_steps=null",
                                  "train.save_every_minutes=null", "optim.grad_clip=0"])
    assert not any(cfg.train.periodic_save(step) for step in range(1, 50))
    assert load_config(cls, path, ["train.save_every=5"]).train.periodic_save(10)
    for override, message in (("train.save_every=-1", "train.save_every and train.keep_last must be >= 0"),
                              ("train.keep_last=-1", "train.save_every and train.keep_last must be >= 0"),
                              ("train.stop_after_steps=0", "train.stop_after_steps must be >= 1 \\(null = off\\)"),
                              ("train.save_every_minutes=0", "train.save_every_minutes must be > 0 \\(null = off\\)"),
                              ("optim.grad_clip=-1", "optim.grad_clip must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(cls, path, [override])


@pytest.mark.parametrize("cls, old, new", [
    (lm_config.LMTrainConfig, "optim.tempnet_lr=1e-4", "tempnet.lr"),
    (lm_config.LMTrainConfig, "debug.synthetic=true", "data.synthetic"),
    (clip_config.BimodalConfig, "train.save_every_steps=100", "train.save_every"),
    (clip_config.BimodalConfig, "train.lr=1e-4", "optim.lr"),
])
def test_a_key_of_an_earlier_version_names_its_new_key(cls, old, new):
    with pytest.raises(ConfigError, match=f"^config key {old.split('=')[0]} was renamed to {new}"):
        load_config(cls, None, [old])
    for key in cls.RENAMED.values():  # every new name exists
        section, name = key.split(" ")[0].split(".")
        assert name in _names(type(getattr(cls(), section)))


@pytest.mark.slow
def test_a_loaded_lm_config_is_not_changed_by_a_run_and_trains_twice(tmp_path):
    from tempnet.train.lm_trainer import train

    cfg = load_config(lm_config.LMTrainConfig, TREES[0][1], [
        "train.max_steps=2", "train.save_every=0", "train.keep_last=0", "train.progress_bar=false",
        "train.tensorboard=false", "data.num_workers=0"])
    loaded = config_to_dict(cfg)
    train(cfg, tmp_path / "a")
    assert config_to_dict(cfg) == loaded  # data.synthetic's paths are the run's config, not the loaded one's
    assert [p.name for p in (tmp_path / "a").glob("checkpoint-*")] == ["checkpoint-2"]  # save_every 0: the end only
    saved = load_config(lm_config.LMTrainConfig, tmp_path / "a" / "config.yaml")
    assert saved.data.files == [str(tmp_path / "a" / "debug_assets" / "corpus.jsonl")]  # config.yaml: the run's
    train(cfg, tmp_path / "b")  # the same loaded config: data.synthetic with no path set


def test_a_loaded_clip_config_is_not_changed_by_a_run(tmp_path):
    pytest.importorskip("timm")
    import torch

    from tempnet.train.clip_trainer import ClipRun

    cfg = load_config(clip_config.BimodalConfig, TREES[1][1], ["data.synthetic_pairs=32", "data.num_workers=0"])
    loaded = config_to_dict(cfg)
    run = ClipRun(cfg, tmp_path, torch.device("cpu"))
    assert config_to_dict(cfg) == loaded
    assert run.cfg.data.train_json == str(tmp_path / "synthetic_data" / "train.json")
    assert [s.name for s in run.cfg.eval.retrieval + run.cfg.eval.zeroshot] == ["synthetic", "synthetic"]
