"""The best-checkpoint rule (`eval.select_best`): OUT/checkpoint-best/ and OUT/best.json, replaced atomically.

An update copies the checkpoint beside the old best (`checkpoint-best.tmp/`, with its record in
`best.json` inside), then swaps the directories by renames and writes OUT/best.json by a rename. A crash at
any point leaves either the old best or the new one whole, and `finish_best_update` (called on resume)
completes an interrupted swap and rewrites OUT/best.json from the record inside checkpoint-best/, so
best.json always names a checkpoint that exists. A non-finite value is never selected.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from tempnet.errors import ConfigError

__all__ = ["keep_if_best", "finish_best_update", "BEST_DIR", "BEST_FILE"]

BEST_DIR, BEST_FILE = "checkpoint-best", "best.json"


def _write_json(file: Path, data: dict) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, file)


def _read(file: Path) -> dict | None:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finish_best_update(out: str | Path) -> None:
    """Complete an update a crash interrupted; afterwards OUT/best.json matches OUT/checkpoint-best/."""
    out = Path(out)
    best, new, old = out / BEST_DIR, out / f"{BEST_DIR}.tmp", out / f"{BEST_DIR}.old"
    if new.is_dir() and (new / BEST_FILE).is_file():  # the copy finished: finish the swap
        if best.exists() and not old.exists():
            os.rename(best, old)
        shutil.rmtree(best, ignore_errors=True)
        os.rename(new, best)
    shutil.rmtree(new, ignore_errors=True)  # a copy that did not finish
    if not best.is_dir() and old.is_dir():
        os.rename(old, best)
    shutil.rmtree(old, ignore_errors=True)
    record = _read(best / BEST_FILE) if best.is_dir() else None
    if record is not None:
        if _read(out / BEST_FILE) != record:
            _write_json(out / BEST_FILE, record)
    elif (out / BEST_FILE).exists():
        (out / BEST_FILE).unlink()


def keep_if_best(out: str | Path, checkpoint: str | Path, record: dict, key: str) -> bool:
    """Make `checkpoint` OUT/checkpoint-best when record[key] beats best.json's (higher is better).

    best.json: {key, value, epoch, step, checkpoint: OUT/checkpoint-best, source: the checkpoint it copies}.
    A NaN or infinite value is never selected (a broken model does not become the best one).
    """
    out, checkpoint = Path(out), Path(checkpoint)
    if key not in record:
        raise ConfigError(f"eval.select_best={key!r} is not a key of eval.json; keys: {sorted(record)}")
    value = record[key]
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    finish_best_update(out)
    best = _read(out / BEST_FILE)
    if best is not None and (best["value"] >= value or best.get("step") == record.get("step")):
        return False
    new = out / f"{BEST_DIR}.tmp"
    shutil.rmtree(new, ignore_errors=True)
    shutil.copytree(checkpoint, new)
    entry = {"key": key, "value": value, "epoch": record.get("epoch"), "step": record.get("step"),
             "checkpoint": str(out / BEST_DIR), "source": str(checkpoint)}
    _write_json(new / BEST_FILE, entry)  # the copy is complete once its record is there
    finish_best_update(out)
    return True
