"""Real crashes: a training process is SIGKILLed while it writes a checkpoint, or in the middle of a step,
then `--resume` continues from the newest complete checkpoint and ends exactly where an uninterrupted run
ends (every logged value but speed, and the final weights). Both trainers.

The kill is placed deterministically: the subprocess runs the real `train.py` through a small wrapper that
sends SIGKILL to its own process from inside the trainer (after a checkpoint's files are written and before
its COMPLETE manifest; or in the middle of a step's bookkeeping: updated, not yet logged or saved)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from lm_runs import ENV, REPO, metrics

pytestmark = pytest.mark.slow

_WRAPPER = """
import os, runpy, signal, sys
from pathlib import Path

point, where = sys.argv[1], sys.argv[2]
if point == "checkpoint":  # die after the files of checkpoint-WHERE, before its COMPLETE manifest
    import tempnet.train.checkpoint as ckpt
    original = ckpt.mark_complete
    def mark_complete(path):
        if Path(path).name == f"checkpoint-{where}":
            os.kill(os.getpid(), signal.SIGKILL)
        original(path)
    ckpt.mark_complete = mark_complete
else:  # die in step WHERE: after its forward, backward and update, before it is logged or saved
    import tempnet.train.logging as logging
    log = logging.MetricsLogger.log
    def dying_log(self, step, metrics):
        if step == int(where):
            os.kill(os.getpid(), signal.SIGKILL)
        return log(self, step, metrics)
    logging.MetricsLogger.log = dying_log
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _python(*args, expect_kill: bool = False):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=400)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _killed(tmp_path, point: str, where: int, argv: list):
    wrapper = tmp_path / "die.py"
    wrapper.write_text(textwrap.dedent(_WRAPPER))
    _python(wrapper, point, where, *argv, expect_kill=True)


def _same_run(a, b, drop=("tokens_per_s", "sec_per_step")):
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))


LM = ["train.max_steps=8", "train.save_every=2", "train.keep_last=4", "train.progress_bar=false"]


def _gpt2(out, *extra):
    return ["GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml", "--output-dir", out, *LM, *extra]


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_faults") / "reference"
    _python(*_gpt2(out))
    return out


@pytest.mark.parametrize("point, where, resumes_from", [("checkpoint", 6, 4), ("step", 5, 4)])
def test_llm_run_killed_then_resumed_equals_an_uninterrupted_run(lm_reference, tmp_path, point, where, resumes_from):
    out = tmp_path / "run"
    _killed(tmp_path, point, where, _gpt2(out))
    partial = sorted(p.name for p in out.glob("checkpoint-*"))
    if point == "checkpoint":
        assert "checkpoint-6" in partial and not (out / "checkpoint-6" / "COMPLETE").exists()
    proc = _python(*_gpt2(out), "--resume")
    if point == "checkpoint":
        assert "skipping" in proc.stderr and "checkpoint-6: no COMPLETE marker" in proc.stderr
    assert f"checkpoint-{resumes_from}" in partial
    _same_run(out, lm_reference)
    a, b = load_file(out / "final" / "model.safetensors"), load_file(lm_reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CLIP = ["loss=isogclr_tempnet", "train.epochs=2", "train.save_every=5", "train.keep_last=4",
        "train.progress_bar=false"]


def _clip(out, *extra):
    return ["Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", out, *CLIP, *extra]


@pytest.mark.parametrize("point, where", [("checkpoint", 15), ("step", 13)])
def test_clip_run_killed_then_resumed_equals_an_uninterrupted_run(tmp_path_factory, tmp_path, point, where):
    reference = tmp_path_factory.getbasetemp() / "clip_reference"
    if not (reference / "checkpoint-20" / "COMPLETE").exists():
        _python(*_clip(reference))
    out = tmp_path / "run"
    _killed(tmp_path, point, where, _clip(out))
    _python(*_clip(out), "--resume")
    _same_run(out, reference)
    assert json.loads((out / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())
    a = load_file(out / "checkpoint-20" / "tempnets.safetensors")
    b = load_file(reference / "checkpoint-20" / "tempnets.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(out / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    state_b = torch.load(reference / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)  # the per-sample moving averages too
