"""Run directories and checkpoints, the same for every trainer (LLM and CLIP).

    OUTPUT_DIR/
      config.yaml              the resolved config of the run
      metrics.jsonl            one line per logged step (+ tensorboard/)
      checkpoint-<step>/       the newest `train.keep_last`
        model.safetensors      weights (DeepSpeed and accelerate keep their own files instead)
        optimizer.pt           optimizers, schedulers, grad scaler, loss state (loads with weights_only=True)
        rng_state_<rank>.pt    every RNG of that rank
        trainer_state.json     step, data position, world size, nodes x processes per node
        config.yaml            the config that wrote it
        COMPLETE               written last: a JSON manifest {file: size} of everything above

A checkpoint is written as `checkpoint-<step>.tmp/` and renamed when complete (tempnet.train.protocol), so a
crash mid-write leaves a `.tmp` directory that resume skips and the next save or prune removes.

A run never silently reuses a directory: without `--resume` a directory holding a run is refused
(`--overwrite` removes it and says what it removed); `--resume` takes the newest checkpoint whose
manifest matches the files on disk (skipping, with a warning, one a crash left partial or
truncated) and refuses a config that changes what was trained.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from tempnet.config import config_diff
from tempnet.distributed import node_layout
from tempnet.errors import UserError

__all__ = ["rng_state", "set_rng_state", "checkpoint_dir", "list_checkpoints", "latest_checkpoint", "mark_complete",
           "prune_checkpoints", "prepare_output_dir", "check_resume", "save_weights", "load_weights", "save_state",
           "load_state", "save_rng", "load_rng", "load_yaml", "write_trainer_state", "read_trainer_state", "RUN_FILES",
           "PARTIAL"]

_PATTERN = re.compile(r"^checkpoint-(\d+)$")
#: Suffix of a directory being written (a checkpoint, the best checkpoint); renamed away when complete.
PARTIAL = ".tmp"
#: What a run writes at the top of its directory (besides checkpoint-<step>/): a directory holding any of
#: them holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "final", "eval.json", "eval_log.jsonl", "best.json",
             "checkpoint-best", "checkpoint-best.tmp", "checkpoint-best.old")


# ---- RNG ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG a training step may draw from (python, numpy, torch CPU, CUDA), as lists and tensors
    only, so `torch.load(..., weights_only=True)` reads it back."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(path: Path, rank: int) -> None:
    torch.save(rng_state(), Path(path) / f"rng_state_{rank}.pt")


def load_rng(path: Path, rank: int) -> None:
    set_rng_state(load_state(Path(path) / f"rng_state_{rank}.pt"))


# ---- files inside a checkpoint ---------------------------------------------------------------------------
def save_weights(state_dict: dict, file: Path) -> None:
    """Tensors as safetensors; each is copied, so tied weights (shared storage) save as two entries."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}, str(file))


def load_weights(file: Path, device: torch.device | str = "cpu") -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(file).is_file():
        raise FileNotFoundError(f"no weights file {file}")
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read weights file {file}: {exc}") from None


def save_state(obj, file: Path) -> None:
    torch.save(obj, file)


def load_state(file: Path, map_location: torch.device | str = "cpu"):
    """torch.load with weights_only=True; an unreadable file is a UserError naming it."""
    if not Path(file).is_file():
        raise FileNotFoundError(f"checkpoint file missing: {file}")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:  # truncated zip, bad magic number
        raise UserError(f"cannot read checkpoint file {file}: {str(exc).splitlines()[0]}") from None


def load_yaml(file: Path) -> dict:
    """A config.yaml written by a run (a UserError naming it if it is missing or unreadable)."""
    import yaml

    if not Path(file).is_file():
        raise FileNotFoundError(f"checkpoint file missing: {file}")
    try:
        data = yaml.safe_load(Path(file).read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    return data or {}


def write_trainer_state(path: Path, state: dict) -> None:
    """`state` + the node layout (nnodes, nproc_per_node: a resume may change it, not the world size)."""
    (Path(path) / "trainer_state.json").write_text(json.dumps({**state, **node_layout()}, indent=1) + "\n")


def read_trainer_state(path: Path, world_size: int) -> dict:
    """trainer_state.json of a checkpoint; resuming with another world size is an error (every rank's
    data position and RNG stream belong to its rank)."""
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    if state["world_size"] != world_size:
        raise UserError(f"{path} was written by {state['world_size']} processes, this run has {world_size}: "
                        "resume with the same number of processes")
    return state


# ---- checkpoint directories ------------------------------------------------------------------------------
def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def _all_checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _partial(output_dir: Path) -> list[Path]:
    """Checkpoint directories a crash left half-written (`checkpoint-<step>.tmp`)."""
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.glob(f"checkpoint-*{PARTIAL}") if _PATTERN.match(p.name[:-len(PARTIAL)]))


def _manifest(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != "COMPLETE"}


def _problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None if its files match its manifest."""
    marker = path / "COMPLETE"
    if not marker.is_file():
        return "no COMPLETE marker (interrupted while writing)"
    try:
        expected = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return "unreadable COMPLETE manifest"
    if not isinstance(expected, dict):  # an old-style marker: no manifest to verify against
        return None
    found = _manifest(path)
    for name, size in expected.items():
        if name not in found:
            return f"{path / name} is missing"
        if found[name] != size:
            return f"{path / name} is truncated or changed ({found[name]} bytes, manifest says {size})"
    return None


def mark_complete(path: str | Path) -> None:
    """Written last, after every rank's files: a manifest of file sizes, so a checkpoint interrupted
    mid-write, or truncated later, is never resumed from."""
    path = Path(path)
    (path / "COMPLETE").write_text(json.dumps(_manifest(path), indent=1) + "\n")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint directories whose files match their manifest, oldest first."""
    return [p for p in _all_checkpoints(Path(output_dir)) if _problem(p) is None]


def latest_checkpoint(output_dir: str | Path) -> Path:
    """The newest usable checkpoint; newer broken ones are skipped with a warning naming the problem."""
    for path in _partial(Path(output_dir)):
        warnings.warn(f"skipping {path}: interrupted while writing (not renamed into place)", stacklevel=2)
    for path in reversed(_all_checkpoints(Path(output_dir))):
        problem = _problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping {path}: {problem}", stacklevel=2)
    raise UserError(f"--resume: no complete checkpoint-<step> directory in {output_dir}")


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (keep_last <= 0 keeps all), any broken
    checkpoint older than the newest complete one, and half-written `.tmp` ones. Every checkpoint is
    finite (the divergence guard runs before each save), so the newest complete one is the newest finite
    one, and it is always kept."""
    complete = list_checkpoints(output_dir)
    if not complete:
        return
    doomed = complete[:-keep_last] if keep_last > 0 else []
    newest = int(_PATTERN.match(complete[-1].name).group(1))
    doomed += [p for p in _all_checkpoints(Path(output_dir))
               if p not in complete and int(_PATTERN.match(p.name).group(1)) < newest]
    doomed += _partial(Path(output_dir))
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


# ---- the run directory -----------------------------------------------------------------------------------
def _run_contents(out: Path) -> list[Path]:
    return [out / name for name in RUN_FILES if (out / name).exists()] + _all_checkpoints(out) + _partial(out)


def prepare_output_dir(output_dir: str | Path, resume: bool, overwrite: bool = False, create: bool = True) -> Path:
    """Check (every rank) and create (`create`: rank 0) the run directory.

    Without resume, a directory that already holds a run is refused unless `overwrite`, which removes
    the run's files (listed on stderr) and keeps anything else (e.g. a shared token cache).
    """
    out = Path(output_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a directory")
    held = _run_contents(out)
    if resume and not list_checkpoints(out):
        broken = [p.name for p in _all_checkpoints(out)]
        raise UserError(f"--resume: no complete checkpoint-<step> directory in {out}"
                        + (f" (broken: {broken})" if broken else ""))
    if not resume and held and not overwrite:
        names = ", ".join(p.name for p in held)
        raise UserError(f"--output-dir {out} already holds a run ({names}): pass --resume to continue it, "
                        "--overwrite to replace it, or choose another directory")
    if not create:
        return out
    if not resume and held:
        import sys

        print(f"--overwrite: removing {', '.join(str(p) for p in held)}", file=sys.stderr, flush=True)
        for p in held:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--output-dir {out} is not writable: {exc.strerror or exc}") from None
    return out


def check_resume(stored: dict, new: dict, safe: Iterable[str], where: Path) -> None:
    """Refuse to resume when the config changes anything but the `safe` fields (dotted names or prefixes).

    Raises a UserError listing every refused field with its stored and new value.
    """
    safe = tuple(safe)

    def value(tree: dict, name: str):
        for part in name.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    refused = [f for f in config_diff(stored, new) if not any(f == s or f.startswith(s + ".") for s in safe)]
    if refused:
        changes = "; ".join(f"{f}: {value(stored, f)!r} -> {value(new, f)!r}" for f in refused)
        raise UserError(f"--resume: the config differs from the one {where} was trained with in {refused} "
                        f"({changes}). Only these may change on resume: {list(safe)}")
