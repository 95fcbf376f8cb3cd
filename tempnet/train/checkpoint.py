"""Checkpoint bookkeeping shared by the trainers: RNG states, step directories, keep-last-K.

A checkpoint is a directory `output_dir/checkpoint-<step>/`; what goes inside is the trainer's
business (model, TempNet, optimizers, schedulers, loss state, data position). This module owns
the parts every trainer needs the same way.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "checkpoint_dir", "list_checkpoints", "latest_checkpoint", "mark_complete",
           "prune_checkpoints"]

_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    """Every RNG a training step may draw from: python, numpy, torch CPU and (if present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories (those holding a `COMPLETE` marker), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PATTERN.match(p.name)) and (p / "COMPLETE").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path:
    """The newest complete checkpoint in output_dir; a clear error if there is none."""
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"--resume: no complete checkpoint-<step> directory in {output_dir}")
    return found[-1]


def mark_complete(path: str | Path) -> None:
    """Written last, so a checkpoint interrupted mid-write is never picked for resuming."""
    (Path(path) / "COMPLETE").write_text("ok\n")


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (keep_last <= 0 keeps all)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
