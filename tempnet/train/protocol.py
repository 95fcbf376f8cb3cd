"""The run protocol both trainers follow, in the order a run meets it.

    with running(output_dir, resume, overwrite, check_inputs) as (out, preemption):  # signals, lock, directory
        seed_everything(cfg.train.seed)
        point = resume_point(out, config_to_dict(cfg), RESUME_SAFE)  # (--resume) checks only: writes nothing
        ...                                                          # the trainer builds data, model, optimizers
        with Protocol.start(out, cfg, point, device, trainer, preemption, total_steps, description) as run:
            for step in ...:                                         # (restored, config.yaml written, logger open)
                ...                                                  # the trainer's optimizer step
                run.end_step(step, loss, grad_norm, skipped, metrics=..., save=...)

`trainer` is what the protocol asks of a trainer: `write_files(dir)` (its rank's checkpoint files),
`load_files(point)` (read them back) and `trainer_state(step)` (trainer_state.json). The step end is one
sequence for both: divergence guard and signals -> check and log -> progress -> save -> preempt.

A checkpoint is written into `checkpoint-<step>.tmp/`, its COMPLETE manifest last, and renamed to
`checkpoint-<step>/` only then, so the previous checkpoint is never touched by a write that fails (a full
disk gives `error: no space left on device while writing PATH`; the partial directory is removed). The
layout inside is tempnet.train.checkpoint's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from tempnet.config import save_config
from tempnet.distributed import is_main_process, max_over_ranks, world_size_and_rank
from tempnet.errors import USER_ERRORS, UserError
from tempnet.train import checkpoint as ckpt
from tempnet.train.best import BEST_FILE, finish_best_update
from tempnet.train.divergence import DivergenceGuard
from tempnet.train.lock import RunLock
from tempnet.train.logging import MetricsLogger, rewind_jsonl
from tempnet.train.signals import Preempted, Preemption

__all__ = ["running", "seed_everything", "open_run", "release", "ResumePoint", "resume_point", "restore",
           "rewind_run_files", "save_checkpoint", "no_space_error", "say", "Protocol"]

#: Below this many free bytes a failed write is taken for a full disk (torch.save reports one as
#: "RuntimeError: ... unexpected pos", without errno).
_FULL = 1 << 20


def say(message: str) -> None:
    """One line on stderr from the main process (the protocol's messages: resumed, preempted)."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    """python, numpy and torch (CPU and CUDA) from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _agree(error: BaseException | None, what: str) -> None:
    """Every rank learns whether any rank failed (a barrier too); the failing rank re-raises its error."""
    if max_over_ranks(error is not None):
        if error is not None:
            raise error
        raise UserError(f"{what} failed on another rank (see its error above)")


def open_run(output_dir: str | Path, resume: bool, overwrite: bool,
             check_inputs: Callable[[], None] = lambda: None) -> tuple[Path, RunLock | None]:
    """Rank 0 locks the run directory, then checks it and (--overwrite) empties it; the other ranks wait.

    The lock comes first (a run into a directory another run holds is refused as such, even while that
    run is still writing its first files); a directory that does not exist yet is checked before it is
    created. `check_inputs` validates what can be checked before anything is removed (data files,
    tokenizer, model paths). Returns (the directory, rank 0's lock or None); `release` it at the end.
    """
    out, error, lock = Path(output_dir), None, None
    if is_main_process():
        try:
            if not out.is_dir():
                ckpt.prepare_output_dir(out, resume, overwrite, create=False)  # nothing there yet to lock
                try:
                    out.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise UserError(f"--output-dir {out} is not writable: {exc.strerror or exc}") from None
            lock = RunLock(out).acquire()
            ckpt.prepare_output_dir(out, resume, overwrite, create=False)
            check_inputs()
            ckpt.prepare_output_dir(out, resume, overwrite)  # now remove (--overwrite)
        except (*USER_ERRORS, OSError) as exc:
            release(lock)
            lock = None
            error = exc if isinstance(exc, USER_ERRORS) else UserError(f"--output-dir {out}: {exc}")
    _agree(error, f"preparing --output-dir {output_dir}")
    return out, lock


@contextlib.contextmanager
def running(output_dir: str | Path, resume: bool, overwrite: bool,
            check_inputs: Callable[[], None] = lambda: None) -> Iterator[tuple[Path, Preemption]]:
    """A run's frame: signals are watched from before anything is written (a signal during start-up ends in
    the first step's checkpoint), the directory is opened and locked (`open_run`), and released at the end.
    Yields (the run directory, the installed Preemption)."""
    with Preemption() as preemption:
        out, lock = open_run(output_dir, resume, overwrite, check_inputs)
        try:
            yield out, preemption
        finally:
            release(lock)


@dataclass
class ResumePoint:
    path: Path
    """The checkpoint directory."""
    state: dict
    """Its trainer_state.json."""

    @property
    def step(self) -> int:
        return int(self.state["step"])


def resume_point(out: Path, config: dict, safe: Iterable[str]) -> ResumePoint:
    """The newest complete checkpoint, after checking that the config and world size may resume it.

    Writes nothing: a refused resume leaves every file as it was.
    """
    path = ckpt.latest_checkpoint(out)
    ckpt.check_resume(ckpt.load_yaml(path / "config.yaml"), config, safe, path)
    return ResumePoint(path, ckpt.read_trainer_state(path, world_size_and_rank()[0]))


def restore(point: ResumePoint, load_files: Callable[[ResumePoint], None]) -> int:
    """Load a resume point: the trainer's files (`load_files`), then the RNG state saved with them (last, so
    nothing loaded after it draws from the streams). Returns the step to continue after."""
    load_files(point)
    ckpt.load_rng(point.path, world_size_and_rank()[1])
    say(f"resumed from {point.path}")
    return point.step


def rewind_run_files(out: Path, step: int) -> None:
    """(rank 0) Make the run's files read as if it had stopped at `step`: eval_log.jsonl loses its later
    rows (and eval.json becomes its last row), and a best-checkpoint update a crash cut short is finished.
    metrics.jsonl and TensorBoard are rewound by the MetricsLogger."""
    if not is_main_process():
        return
    evals = rewind_jsonl(out / "eval_log.jsonl", step)
    if evals:
        (out / "eval.json").write_text(json.dumps(evals[-1], indent=2) + "\n")
    elif (out / "eval.json").exists():
        (out / "eval.json").unlink()
    finish_best_update(out)
    best = out / BEST_FILE
    if best.is_file() and json.loads(best.read_text()).get("step", 0) > step:  # chosen after the checkpoint
        shutil.rmtree(out / "checkpoint-best", ignore_errors=True)
        best.unlink()


def no_space_error(exc: BaseException, path: Path) -> UserError | None:
    """The user error for a write that failed because the disk is full, or None if that was not the cause."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left on device" in str(seen):
            break
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        if not isinstance(exc, (OSError, RuntimeError)) or shutil.disk_usage(where).free >= _FULL:
            return None
    return UserError(f"no space left on device while writing {path}")


def save_checkpoint(out: Path, step: int, write_files: Callable[[Path], None], trainer_state: dict, config,
                    keep_last: int) -> Path:
    """Write checkpoint-<step> (collective: every rank calls it) and prune the older ones.

    `write_files(dir)` writes the rank's files (weights, optimizer state, RNG); rank 0 adds
    trainer_state.json and config.yaml, then the COMPLETE manifest, then renames the directory into place.
    """
    final = ckpt.checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ckpt.PARTIAL)
    error = None
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as exc:
            error = no_space_error(exc, final) or exc
    _agree(error, f"writing {final}")
    try:
        write_files(tmp)
        ckpt.save_rng(tmp, world_size_and_rank()[1])
        if is_main_process():
            ckpt.write_trainer_state(tmp, trainer_state)
            save_config(config, tmp / "config.yaml")
    except Exception as exc:  # noqa: BLE001  (reported below, on every rank)
        error = no_space_error(exc, final) or exc
    if error is not None and is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space; the previous checkpoint is untouched
    _agree(error, f"writing {final}")
    if is_main_process():
        try:
            ckpt.mark_complete(tmp)
            if final.exists():  # a broken checkpoint of the same step (resume skipped it)
                shutil.rmtree(final)
            os.rename(tmp, final)
            ckpt.prune_checkpoints(out, keep_last)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            error = no_space_error(exc, final) or exc
    _agree(error, f"writing {final}")
    return final


def release(lock: RunLock | None) -> None:
    """Drop the run's lock (rank 0) once every rank is done with the directory."""
    if lock is not None:
        lock.release()


class Protocol:
    """A training loop's side of the protocol: the divergence guard, preemption, the logger and every save.

    `Protocol.start` opens it at a run's first step. Per optimizer step the loop calls `end_step`, which is
    `after_step(step, loss, grad_norm, skipped)` (device arithmetic and one tiny CPU all-reduce: the ranks
    agree on a signal and on the wall-clock cadence), then on logging steps `check()` and the log, then
    `save(step)` when the loop asks or the wall clock is due, then `preempt(step)` when `signum` is set: that
    saves (unless this step just was) and raises Preempted. Every save first runs the divergence check.
    `preemption` is the trainer's installed tempnet.train.signals.Preemption (none: signals are not watched).
    """

    def __init__(self, out: Path, device, write_files: Callable[[Path], None], trainer_state: Callable[[int], dict],
                 config, keep_last: int, save_every_minutes: float | None = None, newest: Path | None = None,
                 preemption=None):
        import time

        self.out, self.write_files, self.trainer_state, self.config, self.keep_last = \
            out, write_files, trainer_state, config, keep_last
        self.guard, self.preemption, self.newest = DivergenceGuard(device), preemption or Preemption(), newest
        self.minutes, self._clock, self._last_save = save_every_minutes, time.monotonic, time.monotonic()
        self.signum, self.time_due, self.saved_step = 0, False, None
        self.logger: MetricsLogger | None = None

    @classmethod
    def start(cls, out: Path, config, point: ResumePoint | None, device, trainer, preemption, total_steps: int,
              description: str) -> "Protocol":
        """A run at its first step: `point` restored (the trainer's files, then the RNG) and the run's files
        rewound to it, config.yaml written (rank 0), the metrics logger opened (`config.train`: keep_last,
        save_every_minutes, tensorboard, progress_bar). Close it (a `with` block) when the loop ends."""
        if point is not None:
            restore(point, trainer.load_files)
            rewind_run_files(out, point.step)
        if is_main_process():  # inputs: written once data, model and the resume point passed their checks
            save_config(config, out / "config.yaml")
        t = config.train
        run = cls(out, device, trainer.write_files, trainer.trainer_state, config, t.keep_last, t.save_every_minutes,
                  point.path if point else None, preemption)
        run.logger = MetricsLogger(out, tensorboard=t.tensorboard, resume_step=point.step if point else None,
                                   total_steps=total_steps, progress_bar=t.progress_bar, description=description)
        return run

    def __enter__(self) -> "Protocol":
        return self

    def __exit__(self, *exc) -> None:
        if self.logger is not None:
            self.logger.close()

    def end_step(self, step: int, loss, grad_norm=None, skipped=None, *, metrics: Callable[[], dict] | None = None,
                 save: bool = False, hold: bool = False) -> dict | None:
        """The end of optimizer step `step`, the same for every trainer: guard and signals, then (`metrics`
        given: a logging step) check and log `metrics()`, the progress bar, a save (`save`, or the wall clock
        due), a preemption (a signal). `hold`: the loop saves and preempts itself after this step (CLIP's
        epoch end, evaluated first; its last step), so neither the clock nor a signal acts here.
        Returns the logged record, or None."""
        self.after_step(step, loss, grad_norm, skipped)
        record = None
        if metrics is not None:
            self.check()
            record = self.logger.log(step, metrics())
        self.logger.advance()
        if save or self.time_due and not hold:
            self.save(step)
        if self.signum and not hold:
            self.preempt(step)
        return record

    def after_step(self, step: int, loss, grad_norm=None, skipped=None) -> None:
        self.guard.update(step, loss, grad_norm, skipped)
        due = bool(self.minutes) and is_main_process() and self._clock() - self._last_save >= 60 * self.minutes
        agreed = max_over_ranks((int(due) << 8) | self.preemption.signum)  # rank 0's clock decides the cadence
        self.signum, self.time_due = agreed & 0xFF, bool(agreed >> 8)

    def check(self) -> None:
        """Raise Diverged if any step so far was not finite (reads the on-device flag)."""
        self.guard.check(self.newest)

    def save(self, step: int) -> Path:
        self.check()
        self.newest = save_checkpoint(self.out, step, self.write_files, self.trainer_state(step), self.config,
                                      self.keep_last)
        self.saved_step, self._last_save = step, self._clock()
        return self.newest

    def preempt(self, step: int):
        """Save at `step` (the ranks agreed on it) and raise Preempted; a second signal now aborts at once."""
        self.preemption.saving = True
        path = self.newest if self.saved_step == step else self.save(step)
        self.preemption.saved = True  # from now on a repeated signal is ignored: the process exits 128 + signum
        message = f"preempted at step {step}: saved {path}" if is_main_process() else ""
        raise Preempted(message, self.signum)  # the entry point prints it and exits with 128 + signum
