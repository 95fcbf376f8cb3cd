"""Shared training helpers: the metrics logger and checkpoint bookkeeping."""

import json
import random

import numpy as np
import pytest
import torch

from tempnet.train.checkpoint import (checkpoint_dir, latest_checkpoint, list_checkpoints, mark_complete,
                                      prune_checkpoints, rng_state, set_rng_state)
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


def test_checkpoint_listing_prune_and_incomplete(tmp_path):
    for step in (5, 10, 15):
        checkpoint_dir(tmp_path, step).mkdir()
        mark_complete(checkpoint_dir(tmp_path, step))
    checkpoint_dir(tmp_path, 20).mkdir()  # interrupted mid-write: no COMPLETE marker
    assert latest_checkpoint(tmp_path).name == "checkpoint-15"
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "empty")


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
