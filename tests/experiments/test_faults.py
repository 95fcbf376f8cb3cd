"""Real faults in the LLM trainer, through the real `GPT_2/train.py` as a subprocess (the CLIP trainer's are in
test_faults_clip.py): a SIGKILL while a checkpoint is written or mid-step, SIGTERM / SIGINT (preemption, also
under torchrun), divergence (fp32, fp16), a full disk, two runs into one directory, a torn metrics line. Each
run ends with a known exit status and one-line message, leaves files that can be checked, and `--resume`
continues exactly as if nothing had happened (every logged value but speed, and the final weights). The
fault is placed deterministically from inside the trainer (fault_runs.py). The resumes that only end a run and are
compared with the uninterrupted one (no fault, no launcher, exit 0), and that uninterrupted reference itself, run
as GPT_2/train.py's main(argv) in this process (_here: the numbers of a process); every fault, refusal and torchrun
run is a process of the real entry point."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fault_runs import error_line, faulty, hashes, python_run, same_run, same_weights, wrapper
from helpers import torchrun
from lm_runs import ENV, REPO, assert_runs_match, metrics, run_here

pytestmark = pytest.mark.slow


# ---- the LLM trainer -----------------------------------------------------------------------------------
LM = ["train.max_steps=8", "train.save_every=2", "train.keep_last=4", "train.progress_bar=false", "train.tensorboard=false"]


def _gpt2(out, *extra):
    return ["GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml", "--output-dir", out, *LM, *extra]


def _here(argv: list, *flags: str) -> str:
    """`python GPT_2/train.py ARGV FLAGS` through its main(argv) in this process (lm_runs.run_here: the
    numbers of a process, the globals restored): its stderr. For runs without a fault, compared by their numbers."""
    script, *args = argv
    assert script == "GPT_2/train.py", argv
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run_here(script, [*args, *flags])
    return err.getvalue()


def _resume_here(argv: list) -> str:
    """The resume that ends a faulted run (`ARGV --resume`, _here): its stderr."""
    return _here(argv, "--resume")


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    """The uninterrupted run every LLM fault test compares with (_here)."""
    out = tmp_path_factory.mktemp("lm_faults") / "reference"
    _here(_gpt2(out))
    return out


@pytest.fixture(scope="module")
def gpt2(lm_reference):
    """_gpt2 on the corpus and tokenizer the reference generated (data.synthetic=true) and its token cache: the
    same data and batches, not generated and tokenised again by every run (`datasets` is not even imported)."""
    assets = lm_reference / "debug_assets"
    data = ("data.synthetic=false", f"data.files=[{assets / 'corpus.jsonl'}]",
            f"model.tokenizer={assets / 'tokenizer-gpt2'}", f"data.cache_dir={lm_reference / 'token_cache'}")
    return lambda out, *extra: _gpt2(out, *data, *extra)


def test_llm_run_killed_then_resumed_equals_an_uninterrupted_run(lm_reference, gpt2, tmp_path):
    """Killed after checkpoint-6's files, before its manifest; that run's resume killed in step 7 (updated, not
    yet logged or saved); the second resume ends as the uninterrupted run (each kill once, in one directory)."""
    out = tmp_path / "run"
    faulty(tmp_path, "checkpoint", 6, gpt2(out), expect=-signal.SIGKILL)
    assert (out / "checkpoint-6.tmp").is_dir() and not (out / "checkpoint-6").exists()  # beside, never renamed
    assert (out / "checkpoint-4" / "COMPLETE").is_file()
    proc = faulty(tmp_path, "step", 7, [*gpt2(out), "--resume"], expect=-signal.SIGKILL)
    assert f"resumed from {out / 'checkpoint-4'}" in proc.stderr
    assert "skipping" in proc.stderr and "checkpoint-6.tmp: interrupted while writing" in proc.stderr
    assert not (out / "checkpoint-6.tmp").exists()
    assert (out / "checkpoint-6" / "COMPLETE").is_file() and [r["step"] for r in metrics(out)] == list(range(1, 7))
    assert f"resumed from {out / 'checkpoint-6'}" in _resume_here(gpt2(out))  # step 7 is redone
    same_run(out, lm_reference)
    same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")


def test_llm_sigterm_then_sigint_save_and_exit_then_resume_exactly_and_a_second_run_is_refused(lm_reference, gpt2,
                                                                                               tmp_path):
    """Also test_preemption's LLM cases with loader workers (its matrix: each trainer with 0, 1 and 2 workers):
    SIGTERM with 2 workers, sent again after the save (`twice`), then SIGINT with 1, each to the job's process
    group; the final resume (no workers) ends as the uninterrupted run."""
    out = tmp_path / "run"
    argv = gpt2(out, "data.num_workers=2")
    first = subprocess.Popen([sys.executable, wrapper(tmp_path), "SIGTERM:twice", "2", *map(str, argv)], cwd=REPO,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lock, deadline = out / ".lock", time.time() + 300
    while not (lock.is_file() and lock.read_text().strip() and json.loads(lock.read_text())["pid"] == first.pid):
        assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGSTOP)  # paused while it holds the lock: the second run meets it, whatever the speed
    try:
        message = error_line(python_run(*argv, expect=2))  # a second run into the directory the first holds
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert message.startswith(f"error: {out} is in use by pid {first.pid} on {socket.gethostname()}")
    _, err = first.communicate(timeout=400)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]  # the repeated signal does not change it
    assert err.splitlines()[-1] == f"preempted at step 3: saved {out / 'checkpoint-3'}"
    assert "DataLoader worker" not in err and (out / "checkpoint-3" / "COMPLETE").is_file()
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]  # one run's rows only
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3

    with (out / "metrics.jsonl").open("a") as f:  # a crash tore the last line
        f.write('{"step": 4, "loss": 7.1')
    proc = faulty(tmp_path, "SIGINT", 4, [*gpt2(out, "data.num_workers=1"), "--resume"], expect=128 + signal.SIGINT)
    assert "dropping line 4, torn by a crash" in proc.stderr and f"resumed from {out / 'checkpoint-3'}" in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"preempted at step 5: saved {out / 'checkpoint-5'}"
    assert "DataLoader worker" not in proc.stderr and (out / "checkpoint-5" / "COMPLETE").is_file()
    assert json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())["step"] == 5
    assert f"resumed from {out / 'checkpoint-5'}" in _resume_here(gpt2(out))
    same_run(out, lm_reference)
    same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")


def test_llm_sigterm_under_torchrun_two_processes_then_resume(lm_reference, gpt2, tmp_path):
    out = tmp_path / "run"
    proc = faulty(tmp_path, "SIGTERM", 4, gpt2(out), expect=1, launcher=torchrun(2))  # torchrun's own status
    line = next(line for line in proc.stderr.splitlines() if line.startswith("preempted at step "))
    step = int(line.split()[3].rstrip(":"))
    assert step >= 5 and line == f"preempted at step {step}: saved {out / f'checkpoint-{step}'}"
    saved = out / f"checkpoint-{step}"
    assert {"rng_state_0.pt", "rng_state_1.pt", "COMPLETE"} <= {p.name for p in saved.iterdir()}  # both ranks
    assert [r["step"] for r in metrics(out)] == list(range(1, step + 1))

    before = hashes(out)
    message = error_line(python_run(*gpt2(out), "--resume", expect=2))  # one process: refused, nothing rewritten
    assert "written by 2 processes, this run has 1" in message and hashes(out) == before

    python_run(*gpt2(out), "--resume", launcher=torchrun(2))
    assert_runs_match(metrics(out), metrics(lm_reference), 1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_llm_divergence_stops_with_status_3_keeping_the_newest_finite_checkpoint(gpt2, tmp_path, precision):
    out = tmp_path / "run"
    argv = [*gpt2(out, "train.max_steps=14", "train.save_every=5", "train.keep_last=1",
                   f"train.precision={precision}")]
    # the update of step 7 leaves the weights NaN: step 8's loss is not finite on every machine (TEMPNET_CHECKS
    # off as in production: on, TempNet's own NaN check would raise first)
    message = error_line(faulty(tmp_path, "nan", 7, argv, expect=3, env={"TEMPNET_CHECKS": "0"}))
    assert message.startswith("error: training diverged at step 8: ")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5"]
    assert f"the newest finite checkpoint is {out / 'checkpoint-5'}" in message
    assert not (out / "final").exists()
    weights = load_file(out / "checkpoint-5" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 8)) and all(r["loss"] == r["loss"] for r in rows)  # no NaN


def test_llm_full_disk_is_one_error_and_the_previous_checkpoint_resumes(lm_reference, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for the debug assets and one checkpoint (1.8 MB), not two
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        message = error_line(python_run(*_gpt2(out, "train.keep_last=1"), expect=2))
        assert message == f"error: no space left on device while writing {out / 'checkpoint-4'}"
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
        assert (out / "checkpoint-2" / "COMPLETE").is_file()
        subprocess.run(["mount", "-o", "remount,size=16M", str(disk)], check=True)  # space freed
        assert f"resumed from {out / 'checkpoint-2'}" in _resume_here(_gpt2(out, "train.keep_last=1"))
        same_run(out, lm_reference)
        same_weights(out / "final" / "model.safetensors", lm_reference / "final" / "model.safetensors")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


