"""Helpers of the LLM experiment tests: run the real `train.py` / launchers in a subprocess, read metrics.

Every run is offline (HF_*_OFFLINE=1) from the repository root, exactly as a user types it; a
failed command fails the test with the tail of its output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
FOLDERS = ("GPT_2", "LLaMA-1", "LLaMA-2")


def free_port() -> int:
    """A free TCP port, so concurrent multi-process tests do not collide on the launchers' default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: int = 400, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run cmd from the repository root; raise with the output's tail if it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n---- stderr ----\n" + proc.stderr[-6000:])
        raise AssertionError(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    return proc


def train_cmd(folder: str, out: Path, *overrides: str, config: str = "debug.yaml", resume: bool = False) -> list:
    """The argv after the launcher: `<folder>/train.py --config <folder>/configs/<config> --output-dir OUT ...`."""
    return [f"{folder}/train.py", "--config", f"{folder}/configs/{config}", "--output-dir", out, *overrides,
            *(["--resume"] if resume else [])]


def train(folder: str, out: Path, *overrides: str, config: str = "debug.yaml", resume: bool = False):
    """One plain `python <folder>/train.py ...` process."""
    return run([sys.executable, *train_cmd(folder, out, *overrides, config=config, resume=resume)])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def max_difference(a: list[dict], b: list[dict], key: str) -> float:
    """max |a[key] - b[key]| over steps, after checking both runs logged the same steps."""
    assert [r["step"] for r in a] == [r["step"] for r in b], "the runs logged different steps"
    return max(abs(x[key] - y[key]) for x, y in zip(a, b))


def load_train_module(folder: str):
    """The folder's train.py as a module (folders have hyphens, so they are not packages)."""
    import importlib.util

    name = "lm_train_" + folder.replace("-", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / folder / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]
