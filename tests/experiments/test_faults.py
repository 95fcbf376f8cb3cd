"""Real faults, both trainers, through the real `train.py` as a subprocess: a SIGKILL while a checkpoint or the
best checkpoint is written or mid-step, SIGTERM / SIGINT (preemption, also under torchrun), divergence, a full
disk, two runs into one directory, a torn metrics line. Each run ends with a known exit status and one-line
message, leaves files that can be checked, and `--resume` continues exactly as if nothing had happened
(every logged value but speed, the final weights, CLIP's per-sample state and its best checkpoint).

The fault is placed deterministically: a small wrapper runs `train.py` and acts from inside the trainer
(SIGKILL itself after a checkpoint's files are written and before its manifest, or once the best-checkpoint
copy is done; SIGKILL or a signal to its process group in the middle of a step: updated, not yet logged)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from helpers import torchrun
from lm_runs import ENV, REPO, assert_runs_match, metrics

pytestmark = pytest.mark.slow

_WRAPPER = """
import os, runpy, signal, sys
from pathlib import Path

point, where = sys.argv[1], sys.argv[2]
if point == "checkpoint":  # die after the files of checkpoint-WHERE, before its COMPLETE manifest
    import tempnet.train.checkpoint as ckpt
    original = ckpt.mark_complete
    def mark_complete(path):
        if Path(path).name == f"checkpoint-{where}{ckpt.PARTIAL}":
            os.kill(os.getpid(), signal.SIGKILL)
        original(path)
    ckpt.mark_complete = mark_complete
elif point == "best":  # die when checkpoint-WHERE is copied to checkpoint-best.tmp, before its record is written
    import tempnet.train.best as best
    original = best._write_json
    def write_json(file, data):
        if file.parent.name == "checkpoint-best.tmp" and data["step"] == int(where):
            os.kill(os.getpid(), signal.SIGKILL)
        original(file, data)
    best._write_json = write_json
else:  # in step WHERE, after its update, before it is logged or saved: SIGKILL, or a signal to the process group
    import tempnet.train.logging as logging
    log = logging.MetricsLogger.log
    def dying_log(self, step, metrics):
        if step == int(where) and os.environ.get("RANK", "0") == "0":
            if point == "step":
                os.kill(os.getpid(), signal.SIGKILL)
            group = os.getpgid(os.getppid()) if "TORCHELASTIC_RUN_ID" in os.environ else 0  # torchrun's group
            os.killpg(group, getattr(signal, point))
        return log(self, step, metrics)
    logging.MetricsLogger.log = dying_log
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _python(*args, expect: int = 0, env=None, launcher=None):
    """Run from the repository root in its own session (a signal to its process group reaches nothing else)."""
    proc = subprocess.run([*(launcher or [sys.executable]), *map(str, args)], cwd=REPO, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=400, start_new_session=True)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{proc.stdout[-2000:]}\n" \
                                      f"{proc.stderr[-4000:]}"
    if expect not in (0, -signal.SIGKILL):
        assert launcher or "Traceback" not in proc.stderr, proc.stderr[-3000:]  # torchrun prints its own
    return proc


def _error(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _wrapper(tmp_path):
    wrapper = tmp_path / "fault.py"
    wrapper.write_text(textwrap.dedent(_WRAPPER))
    return wrapper


def _faulty(tmp_path, point: str, where: int, argv: list, expect: int, **kw):
    return _python(_wrapper(tmp_path), point, where, *argv, expect=expect, **kw)


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _same_run(a, b, drop=("tokens_per_s", "sec_per_step")):
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))


def _same_weights(a, b):
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the LLM trainer -----------------------------------------------------------------------------------
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
    _faulty(tmp_path, point, where, _gpt2(out), expect=-signal.SIGKILL)
    if point == "checkpoint":  # written beside, never renamed into place
        assert (out / "checkpoint-6.tmp").is_dir() and not (out / "checkpoint-6").exists()
    assert (out / f"checkpoint-{resumes_from}" / "COMPLETE").is_file()
    proc = _python(*_gpt2(out), "--resume")
    assert f"resumed from {out / f'checkpoint-{resumes_from}'}" in proc.stderr
    if point == "checkpoint":
        assert "skipping" in proc.stderr and "checkpoint-6.tmp: interrupted while writing" in proc.stderr
    assert not (out / "checkpoint-6.tmp").exists()
    _same_run(out, lm_reference)
    _same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")


def test_llm_sigterm_then_sigint_save_and_exit_then_resume_exactly_and_a_second_run_is_refused(lm_reference,
                                                                                               tmp_path):
    import socket
    import time

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, _wrapper(tmp_path), "SIGTERM", "2", *map(str, _gpt2(out))], cwd=REPO,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lock, deadline = out / ".lock", time.time() + 300
    while not (lock.is_file() and lock.read_text().strip() and json.loads(lock.read_text())["pid"] == first.pid):
        assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
        time.sleep(0.2)
    message = _error(_python(*_gpt2(out), expect=2))  # a second run into the directory while the first holds it
    assert message.startswith(f"error: {out} is in use by pid {first.pid} on {socket.gethostname()}")
    _, err = first.communicate(timeout=400)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.splitlines()[-1] == f"preempted at step 3: saved {out / 'checkpoint-3'}"
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]  # one run's rows only
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3

    with (out / "metrics.jsonl").open("a") as f:  # a crash tore the last line
        f.write('{"step": 4, "loss": 7.1')
    proc = _faulty(tmp_path, "SIGINT", 4, [*_gpt2(out), "--resume"], expect=128 + signal.SIGINT)
    assert "dropping line 4, torn by a crash" in proc.stderr and f"resumed from {out / 'checkpoint-3'}" in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"preempted at step 5: saved {out / 'checkpoint-5'}"
    _python(*_gpt2(out), "--resume")
    _same_run(out, lm_reference)
    _same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")


def test_llm_sigterm_under_torchrun_two_processes_then_resume(lm_reference, tmp_path):
    out = tmp_path / "run"
    proc = _faulty(tmp_path, "SIGTERM", 4, _gpt2(out), expect=1, launcher=torchrun(2))  # torchrun's own status
    line = next(line for line in proc.stderr.splitlines() if line.startswith("preempted at step "))
    step = int(line.split()[3].rstrip(":"))
    assert step >= 5 and line == f"preempted at step {step}: saved {out / f'checkpoint-{step}'}"
    saved = out / f"checkpoint-{step}"
    assert {"rng_state_0.pt", "rng_state_1.pt", "COMPLETE"} <= {p.name for p in saved.iterdir()}  # both ranks
    assert [r["step"] for r in metrics(out)] == list(range(1, step + 1))

    before = _hashes(out)
    message = _error(_python(*_gpt2(out), "--resume", expect=2))  # one process: refused, nothing rewritten
    assert "written by 2 processes, this run has 1" in message and _hashes(out) == before

    _python(*_gpt2(out), "--resume", launcher=torchrun(2))
    assert_runs_match(metrics(out), metrics(lm_reference), 1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_llm_divergence_stops_with_status_3_keeping_the_newest_finite_checkpoint(tmp_path, precision):
    out = tmp_path / "run"
    argv = ["GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml", "--output-dir", out, "optim.lr=50",
            "optim.min_lr=0", "optim.warmup_steps=40", "train.max_steps=14", "train.save_every=5", "train.keep_last=1",
            "train.progress_bar=false", f"train.precision={precision}"]
    # TEMPNET_CHECKS off as in production (on, TempNet's own NaN check would raise first)
    message = _error(_python(*argv, expect=3, env={"TEMPNET_CHECKS": "0"}))
    step = int(message.split("diverged at step ")[1].split(":")[0])
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    newest = f"checkpoint-{(step - 1) // 5 * 5}"
    assert kept == [newest] and f"the newest finite checkpoint is {out / newest}" in message
    assert not (out / "final").exists()
    weights = load_file(out / newest / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = metrics(out)
    assert rows[-1]["step"] == step - 1 and all(r["loss"] == r["loss"] for r in rows)  # no NaN row logged


def test_llm_full_disk_is_one_error_and_the_previous_checkpoint_resumes(lm_reference, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for the debug assets and one checkpoint (1.8 MB), not two
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        message = _error(_python(*_gpt2(out, "train.keep_last=1"), expect=2))
        assert message == f"error: no space left on device while writing {out / 'checkpoint-4'}"
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
        assert (out / "checkpoint-2" / "COMPLETE").is_file()
        subprocess.run(["mount", "-o", "remount,size=16M", str(disk)], check=True)  # space freed
        proc = _python(*_gpt2(out, "train.keep_last=1"), "--resume")
        assert f"resumed from {out / 'checkpoint-2'}" in proc.stderr
        _same_run(out, lm_reference)
        _same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- the CLIP trainer -----------------------------------------------------------------------------------
CLIP = ["loss=isogclr_tempnet", "train.epochs=2", "train.save_every=5", "train.keep_last=4",
        "train.progress_bar=false", "eval.select_best=synthetic/r_mean"]


def _clip(out, *extra):
    return ["Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", out, *CLIP, *extra]


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_faults") / "reference"
    _python(*_clip(out))
    return out


def _same_clip_run(out, reference):
    _same_run(out, reference)
    assert (out / "eval_log.jsonl").read_text() == (reference / "eval_log.jsonl").read_text()  # rewound, no repeat
    assert json.loads((out / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())
    _same_weights(out / "checkpoint-20" / "tempnets.safetensors", reference / "checkpoint-20" / "tempnets.safetensors")
    state_a = torch.load(out / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    state_b = torch.load(reference / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)  # the per-sample moving averages too
    best, best_ref = json.loads((out / "best.json").read_text()), json.loads((reference / "best.json").read_text())
    assert (best["step"], best["value"]) == (best_ref["step"], best_ref["value"])
    assert best["checkpoint"] == str(out / "checkpoint-best")
    _same_weights(out / "checkpoint-best" / "model.safetensors", reference / "checkpoint-best" / "model.safetensors")


@pytest.mark.parametrize("point, where", [("checkpoint", 20), ("step", 13)])
def test_clip_run_killed_then_resumed_equals_an_uninterrupted_run(clip_reference, tmp_path, point, where):
    out = tmp_path / "run"
    _faulty(tmp_path, point, where, _clip(out), expect=-signal.SIGKILL)
    if point == "checkpoint":  # killed after epoch 2's evaluation was logged, before its checkpoint was complete
        assert len((out / "eval_log.jsonl").read_text().splitlines()) == 2
    _python(*_clip(out), "--resume")
    _same_clip_run(out, clip_reference)


def test_clip_killed_in_the_best_update_then_sigterm_and_sigint_mid_epoch_then_resume(clip_reference, tmp_path):
    out = tmp_path / "run"
    _faulty(tmp_path, "best", 10, _clip(out), expect=-signal.SIGKILL)  # epoch 1 saved, its best copy unfinished
    assert (out / "checkpoint-10" / "COMPLETE").is_file() and not (out / "best.json").exists()
    proc = _faulty(tmp_path, "SIGTERM", 11, [*_clip(out), "--resume"], expect=128 + signal.SIGTERM)
    assert f"resumed from {out / 'checkpoint-10'}" in proc.stderr
    assert json.loads((out / "best.json").read_text())["step"] == 10  # the interrupted update was finished
    assert proc.stderr.splitlines()[-1] == f"preempted at step 12: saved {out / 'checkpoint-12'}"
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["step_in_epoch"] == 2  # mid-epoch
    proc = _faulty(tmp_path, "SIGINT", 16, [*_clip(out), "--resume"], expect=128 + signal.SIGINT)
    assert proc.stderr.splitlines()[-1] == f"preempted at step 17: saved {out / 'checkpoint-17'}"
    _python(*_clip(out), "--resume")
    _same_clip_run(out, clip_reference)

    before = _hashes(out)  # a changed loss argument is refused as for the LLM, nothing rewritten
    message = _error(_python(*_clip(out, "loss_args.gamma=0.5", "train.epochs=3"), "--resume", expect=2))
    assert "['loss_args.gamma']" in message and _hashes(out) == before


def test_clip_divergence_stops_with_status_3_and_a_nan_model_never_scores(clip_reference, tmp_path):
    out = tmp_path / "run"
    message = _error(_python(*_clip(out, "train.epochs=3", "optim.lr=1e4", "optim.min_lr=0", "optim.warmup_steps=0"),
                             expect=3, env={"TEMPNET_CHECKS": "0"}))
    assert "training diverged at step" in message and "no checkpoint was written before it" in message
    assert not any(out.glob("checkpoint-*")) and not (out / "eval.json").exists() and not (out / "best.json").exists()

    broken = tmp_path / "broken"  # a model whose weights are NaN, evaluated on its own: NaN, never 100
    (broken / "checkpoint-20").mkdir(parents=True)
    for name in ("config.yaml", "trainer_state.json"):
        (broken / "checkpoint-20" / name).write_bytes((clip_reference / "checkpoint-20" / name).read_bytes())
    from safetensors.torch import save_file

    weights = load_file(clip_reference / "checkpoint-20" / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              broken / "checkpoint-20" / "model.safetensors")
    _python("Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", broken / "eval",
            "--evaluate", "--checkpoint", broken / "checkpoint-20", "data.synthetic=true")
    record = json.loads((broken / "eval" / "eval.json").read_text())
    scores = {k: v for k, v in record.items() if k.endswith(("_r1", "zeroshot_top1", "r_mean"))}
    assert scores and all(v != v for v in scores.values()), scores  # NaN
