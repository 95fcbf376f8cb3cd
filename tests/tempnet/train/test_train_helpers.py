"""Shared training helpers: the metrics logger and checkpoint bookkeeping."""

import json
import random

import numpy as np
import pytest
import torch

from tempnet.errors import UserError
from tempnet.train.checkpoint import (check_resume, checkpoint_dir, latest_checkpoint, list_checkpoints, load_rng,
                                      load_state, mark_complete, prepare_output_dir, prune_checkpoints, save_rng)
from tempnet.train.logging import MetricsLogger


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_logger_writes_jsonl_and_truncates_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        log.log(step, {"loss": torch.tensor(1.0 / step), "tau_mean": 0.5})
    log.close()
    rows = _read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == pytest.approx(0.5)
    assert any((tmp_path / "tensorboard").iterdir())
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_step=2)  # the crash lost step 3's checkpoint
    resumed.log(3, {"loss": 0.25})
    assert [r["step"] for r in _read(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    MetricsLogger(tmp_path, tensorboard=False)  # a fresh run starts a fresh file
    assert not (tmp_path / "metrics.jsonl").exists()


def _checkpoint(root, step, payload=b"x" * 100):
    path = checkpoint_dir(root, step)
    path.mkdir()
    (path / "model.safetensors").write_bytes(payload)
    mark_complete(path)
    return path


def test_checkpoint_listing_prune_incomplete_and_truncated(tmp_path):
    for step in (5, 10, 15):
        _checkpoint(tmp_path, step)
    checkpoint_dir(tmp_path, 20).mkdir()  # interrupted mid-write: no COMPLETE marker
    with pytest.warns(UserWarning, match="checkpoint-20: no COMPLETE marker"):
        assert latest_checkpoint(tmp_path).name == "checkpoint-15"
    with (checkpoint_dir(tmp_path, 15) / "model.safetensors").open("r+b") as f:  # truncated after it was written
        f.truncate(40)
    with pytest.warns(UserWarning, match=r"model.safetensors is truncated or changed \(40 bytes, manifest says 100\)"):
        assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10"]
    prune_checkpoints(tmp_path, keep_last=1)  # keeps the newest complete one and what is newer than it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15", "checkpoint-20"]
    with pytest.raises(UserError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "empty")


def test_output_dir_is_created_refused_when_it_holds_a_run_and_overwritten_on_request(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"
    assert prepare_output_dir(out, resume=False).is_dir()  # parents created
    (out / "token_cache").mkdir()
    assert prepare_output_dir(out, resume=False) == out  # only a cache: not a run
    (out / "metrics.jsonl").write_text("{}\n")
    _checkpoint(out, 3)
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl, checkpoint-3\).*--resume.*--overwrite"):
        prepare_output_dir(out, resume=False)
    assert prepare_output_dir(out, resume=True) == out
    prepare_output_dir(out, resume=False, overwrite=True)
    assert "removing" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["token_cache"]
    with pytest.raises(UserError, match="no complete checkpoint"):
        prepare_output_dir(out, resume=True)
    with pytest.raises(UserError, match="contradict"):
        prepare_output_dir(out, resume=True, overwrite=True)


def test_unwritable_output_dir_is_a_user_error(tmp_path):
    import os

    if os.geteuid() == 0:  # root writes anywhere: use a path below a regular file instead
        (tmp_path / "file").write_text("")
        with pytest.raises(UserError, match="not writable|not a directory"):
            prepare_output_dir(tmp_path / "file" / "run", resume=False)
    else:
        tmp_path.chmod(0o500)
        with pytest.raises(UserError, match="not writable"):
            prepare_output_dir(tmp_path / "run", resume=False)


def test_resume_names_every_changed_field_and_allows_the_safe_ones(tmp_path):
    stored = {"objective": "tempnet_dro", "train": {"max_steps": 10, "seed": 1}, "model": {"base": {"n_layer": 2}}}
    check_resume(stored, {**stored, "train": {"max_steps": 20, "seed": 1}}, ["train.max_steps"], tmp_path)
    new = {"objective": "ce", "train": {"max_steps": 20, "seed": 2}, "model": {"base": {"n_layer": 3}}}
    with pytest.raises(UserError) as err:
        check_resume(stored, new, ["train.max_steps"], tmp_path)
    message = str(err.value)
    assert "['model.base.n_layer', 'objective', 'train.seed']" in message and "'tempnet_dro' -> 'ce'" in message


def test_rng_state_round_trip_loads_with_weights_only(tmp_path):
    save_rng(tmp_path, 0)
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item())
    load_rng(tmp_path, 0)  # torch.load(weights_only=True) inside
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()) == first
    torch.load(tmp_path / "rng_state_0.pt", weights_only=True)


def test_corrupt_state_file_is_a_user_error_naming_it(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "optimizer.pt")
    data = (tmp_path / "optimizer.pt").read_bytes()
    (tmp_path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint file .*optimizer.pt"):
        load_state(tmp_path / "optimizer.pt")
