"""The Bimodal-CL tests' runs: the real `Bimodal-CL/train.py` in-process (its `main(argv)`) or under
torchrun, and what a run wrote. The generic pieces are tests/helpers.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers import REPO, load_module, read_jsonl, run, torchrun

TRAIN = REPO / "Bimodal-CL" / "train.py"
DEBUG = REPO / "Bimodal-CL" / "configs" / "debug.yaml"


def train_module():
    """Bimodal-CL/train.py as a module (the folder has a hyphen, so it is loaded by path)."""
    return load_module("bimodal_cl_train", TRAIN)


def argv(out, *overrides, resume=False, evaluate=None, config=DEBUG) -> list[str]:
    return ["--config", str(config), "--output-dir", str(out), *map(str, overrides), *(["--resume"] if resume else []),
            *(["--evaluate", "--checkpoint", str(evaluate)] if evaluate else [])]


def run_main(out, *overrides, resume=False, evaluate=None, config=DEBUG):
    """The trainer's main() in this process, exactly as the command line would call it."""
    return train_module().main(argv(out, *overrides, resume=resume, evaluate=evaluate, config=config))


def run_torchrun(nproc: int, out, *overrides, timeout: int = 300):
    """`torchrun --nproc_per_node N Bimodal-CL/train.py ...` (as `python -m torch.distributed.run`)."""
    return run([*torchrun(nproc), TRAIN, *argv(out, *overrides)], timeout=timeout)


def metrics(out) -> list[dict]:
    return read_jsonl(Path(out) / "metrics.jsonl")


def eval_log(out) -> list[dict]:
    return read_jsonl(Path(out) / "eval_log.jsonl")


def checkpoint(out, step: int) -> tuple[dict, dict]:
    """(model state dict, everything else) of OUT/checkpoint-<step>: optimizer.pt's entries (optimizers,
    schedulers, scaler, criterion), trainer_state.json's (epoch, step, world_size) and the TempNets."""
    from safetensors.torch import load_file

    path = Path(out) / f"checkpoint-{step}"
    assert (path / "COMPLETE").is_file(), f"{path} is missing or incomplete"
    state = {**torch.load(path / "optimizer.pt", weights_only=True),
             **json.loads((path / "trainer_state.json").read_text())}
    if (path / "tempnets.safetensors").is_file():
        state["tempnets"] = load_file(path / "tempnets.safetensors")
    return load_file(path / "model.safetensors"), state


def tensors(tree, prefix="") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts / lists, by a dotted path."""
    out = {}
    if torch.is_tensor(tree):
        out[prefix] = tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(tensors(v, f"{prefix}.{i}"))
    return out
