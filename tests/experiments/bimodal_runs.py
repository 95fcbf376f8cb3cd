"""Helpers of the Bimodal-CL tests: run the real `Bimodal-CL/train.py` in-process (its `main(argv)`) or
under torchrun, and read what a run wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "Bimodal-CL" / "train.py"
DEBUG = REPO / "Bimodal-CL" / "configs" / "debug.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
_MODULE = None


def train_module():
    """Bimodal-CL/train.py as a module (the folder has a hyphen, so it is loaded by path)."""
    global _MODULE
    if _MODULE is None:
        spec = importlib.util.spec_from_file_location("bimodal_cl_train", TRAIN)
        _MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_MODULE)
    return _MODULE


def argv(out, *overrides, resume=False, evaluate=None, config=DEBUG) -> list[str]:
    return ["--config", str(config), "--output-dir", str(out), *map(str, overrides), *(["--resume"] if resume else []),
            *(["--evaluate", "--checkpoint", str(evaluate)] if evaluate else [])]


def run_main(out, *overrides, resume=False, evaluate=None, config=DEBUG):
    """The trainer's main() in this process, exactly as the command line would call it."""
    return train_module().main(argv(out, *overrides, resume=resume, evaluate=evaluate, config=config))


def run_torchrun(nproc: int, out, *overrides, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(TRAIN),
           *argv(out, *overrides)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def eval_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "eval_log.jsonl").read_text().splitlines() if line.strip()]


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
