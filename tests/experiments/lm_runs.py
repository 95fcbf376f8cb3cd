"""The LLM experiment tests' runs: the real `<folder>/train.py` as a subprocess or in-process, and what it wrote.

Every run is offline from the repository root, exactly as a user types it; a failed command fails
the test with the tail of its output. The generic pieces (free port, JSONL, launchers) are tests/helpers.py.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from helpers import OFFLINE_ENV as ENV  # noqa: F401  (re-exported for the tests that pass env= on)
from helpers import REPO, free_port, load_module, read_jsonl, run  # noqa: F401

FOLDERS = ("GPT_2", "LLaMA-1", "LLaMA-2")


#: The LLaMA debug configs switched to another family: their model.base keys are Qwen2's and Gemma 2's too
#: (Gemma 2 soft-caps its logits: final_logit_softcapping 30 by default).
FAMILIES = {"qwen2": ("model.arch=qwen2",), "gemma2": ("model.arch=gemma2", "model.base.head_dim=32")}


def short_run(steps: int) -> tuple[str, ...]:
    """A STEPS-step run saving every 2 steps and keeping the last 2, quiet."""
    return (f"train.max_steps={steps}", "train.save_every=2", "train.keep_last=2", "train.progress_bar=false",
            "train.tensorboard=false")


def train_cmd(folder: str, out: Path, *overrides: str, config: str = "debug.yaml", resume: bool = False) -> list:
    """The argv after the launcher: `<folder>/train.py --config <folder>/configs/<config> --output-dir OUT ...`."""
    return [f"{folder}/train.py", "--config", f"{folder}/configs/{config}", "--output-dir", out, *overrides,
            *(["--resume"] if resume else [])]


def train(folder: str, out: Path, *overrides: str, config: str = "debug.yaml", resume: bool = False):
    """One plain `python <folder>/train.py ...` process."""
    return run([sys.executable, *train_cmd(folder, out, *overrides, config=config, resume=resume)])


def metrics(out: Path) -> list[dict]:
    """OUT/metrics.jsonl, one dict per logged step."""
    return read_jsonl(Path(out) / "metrics.jsonl")


def max_difference(a: list[dict], b: list[dict], key: str) -> float:
    """max |a[key] - b[key]| over steps, after checking both runs logged the same steps."""
    assert [r["step"] for r in a] == [r["step"] for r in b], "the runs logged different steps"
    return max(abs(x[key] - y[key]) for x, y in zip(a, b))


def assert_runs_match(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    """Two runs of the same global batches agree step by step: loss and tau_mean to `tol` absolute, grad_norm
    to `tol` relative (float32 reductions in another order), the learning rate exactly."""
    for key in ("loss", "tau_mean"):
        assert max_difference(a, b, key) <= tol, (key, [r[key] for r in a], [r[key] for r in b])
    assert all("grad_norm" in r for r in a + b), "a run logged no grad_norm"
    assert max_difference(a, b, "grad_norm") <= tol * max(r["grad_norm"] for r in a), \
        ("grad_norm", [r["grad_norm"] for r in a], [r["grad_norm"] for r in b])
    assert max_difference(a, b, "lr") == 0.0


def load_train_module(folder: str):
    """The folder's train.py as a module (folders have hyphens, so they are not packages)."""
    return load_module("lm_train_" + folder.replace("-", "_"), REPO / folder / "train.py")


@contextmanager
def _globals_restored():
    """Restores what an in-process run changes for the tests after it: the global RNGs it seeds, the environment
    and the working directory (the trainer restores its own signal handlers)."""
    import os
    import random

    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(), dict(os.environ), os.getcwd())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        os.environ.clear()
        os.environ.update(state[3])
        os.chdir(state[4])


def main_in_process(folder: str, argv: list) -> dict:
    """The folder's train.py main(argv) in this process (a run of one process, no launcher: no process group), the
    globals restored afterwards. Returns the last logged metrics."""
    with _globals_restored():
        return load_train_module(folder).main([str(a) for a in argv])


def run_here(script: str, argv: list) -> dict:
    """`python SCRIPT ARGV` from the repository root (SCRIPT `<folder>/train.py`, ARGV starting `--config CONFIG`)
    through the folder's main(argv) in this process: CONFIG made absolute, as the subprocess finds it from the
    repository root; the globals restored (main_in_process). Returns the last logged metrics."""
    folder, name = str(script).split("/")
    assert name == "train.py" and argv[0] == "--config", (script, argv)
    return main_in_process(folder, [argv[0], str(REPO / argv[1]), *argv[2:]])


def train_here(folder: str, out: Path, *overrides: str, config: str = "debug.yaml", resume: bool = False) -> dict:
    """The same run as `train(...)`, through the folder's `main(argv)` in this process (no interpreter start-up, no
    imports: a tiny debug run is mostly those). For runs checked by their numbers only; the command line itself runs
    as a subprocess elsewhere (train() here, the launch-script tests). On one thread, as the subprocesses
    (tests/conftest.py): the numbers equal a subprocess's bit for bit. The globals are restored afterwards, so the
    run changes nothing another test sees."""
    script, *argv = train_cmd(folder, out, *overrides, config=config, resume=resume)
    return run_here(script, argv)


_SEVERAL_RUNS = '''"""<folder>/train.py's main(argv) once per argv, one after another, in this launched process."""
import importlib.util, json, sys
from tempnet import distributed
from tempnet.train import engines, lm_trainer

launcher = [a for a in sys.argv[1:] if a.startswith(("--local_rank", "--local-rank"))]  # the deepspeed launcher's
train_py, argvs = [a for a in sys.argv[1:] if a not in launcher]
spec = importlib.util.spec_from_file_location("lm_train", train_py)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
# One process group for all the runs: their teardowns wait for the last (DeepSpeed caches groups made from the
# group; accelerate's end_training would tear it down under its shared state, which the next run reuses).
lm_trainer.destroy = lambda: None
engines.AccelerateEngine.close = lambda self: None
for argv in json.loads(argvs):
    module.main(argv + launcher)
distributed.destroy()
'''


def several_runs_cmd(folder: str, script_dir: Path, *argvs: list) -> list:
    """The argv after a launcher for one launch that runs several trainings in turn: the folder's main(argv) for
    each ARGV (train_cmd(...)[1:]) in the same launched processes, each run seeded from its config as in a fresh
    process, one process group for all (the teardowns at the end of a run, the trainer's and accelerate's
    end_training, wait for the last: DeepSpeed caches groups made from it, accelerate's shared state holds it for
    the next run). For runs checked by their numbers and files only (a launch's interpreter start-up and imports
    are most of a tiny run's cost); each launcher with train.py itself runs as a user types it elsewhere. The
    `deepspeed` launcher's --local_rank=N goes on to every run. The driver script is written to SCRIPT_DIR."""
    import json

    script = Path(script_dir) / "several_runs.py"
    script.write_text(_SEVERAL_RUNS)
    return [script, REPO / folder / "train.py", json.dumps([[str(a) for a in argv] for argv in argvs])]
