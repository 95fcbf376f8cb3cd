"""Metrics logging shared by the trainers: a progress bar, a JSONL file and TensorBoard, rank 0 only."""

from __future__ import annotations

import errno
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Mapping

import torch

from tempnet.distributed import is_main_process, node_layout
from tempnet.errors import UserError

__all__ = ["MetricsLogger", "rewind_jsonl", "append_jsonl"]


def _to_float(value) -> float:
    if torch.is_tensor(value):
        value = value.detach().float().item()
    return float(value)


def rewind_jsonl(path: str | Path, step: int) -> list[dict]:
    """Keep the rows of a JSONL log with "step" <= `step` (a resumed run continues from there); a line
    a crash tore (not valid JSON) is dropped with a warning. Rewritten by a rename; returns the rows kept."""
    path = Path(path)
    if not path.exists():
        return []
    kept, lines = [], []
    for number, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: dropping line {number}, torn by a crash: {line[:80]!r}", stacklevel=2)
            continue
        if row.get("step", 0) <= step:
            kept.append(row)
            lines.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return kept


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line; a full disk is a user error naming the file (the torn line is dropped on resume)."""
    try:
        with Path(path).open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"no space left on device while writing {path}") from None
        raise


class MetricsLogger:
    """Writes one JSON object per logged step to `output_dir/metrics.jsonl` and the same scalars to
    TensorBoard (`output_dir/tensorboard`). Only the main process writes; others are no-ops.

    A resumed run appends to the same JSONL file, first dropping lines past the resume step (and a line
    a crash tore) so the file reads as one uninterrupted run; TensorBoard purges its events past it too.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 total_steps: int | None = None, progress_bar: bool = True, description: str = ""):
        from tqdm.auto import tqdm

        self.enabled = is_main_process()
        self.layout = node_layout()  # on every JSONL line (not TensorBoard): which nodes x processes logged it
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self.bar = tqdm(total=total_steps, initial=resume_step or 0, desc=description, dynamic_ncols=True,
                        disable=not (self.enabled and progress_bar))
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            rewind_jsonl(self.path, resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: JSONL is the record of truth
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1  # drops events of steps after it
                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=purge)
        self._t0 = time.time()

    def log(self, step: int, metrics: Mapping[str, float | torch.Tensor]) -> dict:
        """Record `metrics` at `step`; returns the plain-float record (also on non-main ranks)."""
        record = {"step": int(step), **{k: _to_float(v) for k, v in metrics.items()}}
        shown = {k: f"{record[k]:.4g}" for k in ("loss", "tau_mean", "tau_image") if k in record}
        self.bar.set_postfix(shown, refresh=False)
        if not self.enabled:
            return record
        append_jsonl(self.path, {**record, **self.layout})
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        return record

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar (every step, logged or not)."""
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
        if self._tb is not None:
            self._tb.close()
