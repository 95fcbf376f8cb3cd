"""The run protocol's parts on their own: the lock, the divergence guard, the atomic best checkpoint, metric
files that rewind, full-disk errors, and evaluation that never scores a broken model."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tempnet.errors import UserError
from tempnet.eval.retrieval import retrieval_metrics
from tempnet.eval.tables import Cell, _format, _raw_cell
from tempnet.eval.zeroshot import topk_accuracy
from tempnet.train.best import finish_best_update, keep_if_best
from tempnet.train.checkpoint import checkpoint_dir, mark_complete, prepare_output_dir
from tempnet.train.divergence import MAX_SKIPPED_STEPS, DivergenceGuard, Diverged
from tempnet.train.lock import RunLock
from tempnet.train.logging import MetricsLogger, rewind_jsonl
from tempnet.train.protocol import no_space_error


# ---- lock --------------------------------------------------------------------------------------------
def test_a_second_run_is_refused_naming_pid_and_host_and_a_dead_one_is_taken_over(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(UserError, match=rf"{tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire()  # another open file description: flock refuses it, as for another process
    first.release()
    RunLock(tmp_path).acquire().release()  # released: free again

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {int(dead.stdout)}"):
        lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    lock.release()


def test_without_flock_the_lock_file_decides_and_another_hosts_lock_is_refused(tmp_path, monkeypatch):
    from tempnet.train import lock as lock_module

    def no_flock(fd, operation):  # a filesystem without flock (some NFS / Lustre mounts)
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    holder = tmp_path / ".lock"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # no such process here, whatever it is on the other host
    holder.write_text(json.dumps({"host": "gpu-b03", "pid": dead}))  # a live run there cannot be told from here
    with pytest.raises(UserError, match=rf"{tmp_path} is in use by pid {dead} on gpu-b03"):
        RunLock(tmp_path).acquire()
    holder.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # alive on this host
    with pytest.raises(UserError, match=rf"in use by pid {os.getppid()} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire()
    holder.write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))  # dead on this host: taken over
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {dead}"):
        RunLock(tmp_path).acquire().release()


# ---- divergence --------------------------------------------------------------------------------------
def test_guard_names_the_first_non_finite_step_and_tolerates_short_fp16_skips():
    guard = DivergenceGuard("cpu")
    guard.update(1, torch.tensor([2.0, 3.0]), torch.tensor(1.0))
    guard.check("OUT/checkpoint-1")  # finite: nothing
    guard.update(2, torch.tensor(1.0), torch.tensor(float("inf")))
    guard.update(3, torch.tensor(float("nan")), torch.tensor(1.0))
    with pytest.raises(Diverged, match="diverged at step 2.*newest finite checkpoint is OUT/checkpoint-1"):
        guard.check("OUT/checkpoint-1")

    assert MAX_SKIPPED_STEPS == 100  # documented: 100 skipped fp16 steps in a row are divergence
    fp16 = DivergenceGuard("cpu")
    for step in range(1, 100):  # 99 steps the scaler skipped (inf gradients): not divergence
        fp16.update(step, torch.tensor(1.0), torch.tensor(float("inf")), skipped=torch.tensor(True))
    assert fp16.first_bad_step() is None
    fp16.update(100, torch.tensor(1.0), torch.tensor(1.0), skipped=torch.tensor(False))  # the run starts again
    for step in range(101, 201):
        fp16.update(step, torch.tensor(1.0), torch.tensor(float("nan")), skipped=torch.tensor(True))
        assert fp16.first_bad_step() == (200 if step == 200 else None)  # the 100th skip in a row, not before


# ---- best checkpoint -----------------------------------------------------------------------------------
def _checkpoints(root, steps):
    out = []
    for step in steps:
        path = checkpoint_dir(root, step)
        path.mkdir()
        (path / "model.safetensors").write_text(str(step))
        mark_complete(path)
        out.append(path)
    return out


def _best(root):
    return json.loads((root / "best.json").read_text())


def test_best_checkpoint_never_takes_nan_and_a_crash_mid_update_is_finished(tmp_path):
    a, b, c = _checkpoints(tmp_path, (10, 20, 30))
    key = "coco/r_mean"
    assert keep_if_best(tmp_path, a, {"epoch": 1, "step": 10, key: 40.0}, key)
    assert not keep_if_best(tmp_path, b, {"epoch": 2, "step": 20, key: float("nan")}, key)
    assert _best(tmp_path)["step"] == 10 and _best(tmp_path)["checkpoint"] == str(tmp_path / "checkpoint-best")

    # killed after the copy of checkpoint-30 was complete, before the swap: resume finishes it
    import shutil

    shutil.copytree(c, tmp_path / "checkpoint-best.tmp")
    (tmp_path / "checkpoint-best.tmp" / "best.json").write_text(json.dumps({"key": key, "value": 50.0, "step": 30}))
    os.rename(tmp_path / "checkpoint-best", tmp_path / "checkpoint-best.old")  # ... mid-swap
    finish_best_update(tmp_path)
    assert (tmp_path / "checkpoint-best" / "model.safetensors").read_text() == "30"
    assert _best(tmp_path)["step"] == 30 and not (tmp_path / "checkpoint-best.old").exists()

    # killed during the copy (no record inside yet): the old best stays whole, best.json still names it
    shutil.copytree(a, tmp_path / "checkpoint-best.tmp")
    (tmp_path / "best.json").unlink()  # and best.json lost too: rewritten from checkpoint-best's own record
    finish_best_update(tmp_path)
    assert not (tmp_path / "checkpoint-best.tmp").exists()
    assert (tmp_path / "checkpoint-best" / "model.safetensors").read_text() == "30" and _best(tmp_path)["step"] == 30


# ---- files ---------------------------------------------------------------------------------------------
def test_a_torn_last_line_is_dropped_with_a_warning_and_later_rows_rewound(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    with pytest.warns(UserWarning, match=r"dropping line 4, torn by a crash"):
        assert [r["step"] for r in rewind_jsonl(log, 2)] == [1, 2]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_step=1, progress_bar=False)
    logger.log(2, {"loss": 0.5})
    logger.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_directory_holding_only_final_is_a_run(tmp_path):
    (tmp_path / "final").mkdir()
    with pytest.raises(UserError, match=r"already holds a run \(final\).*--resume.*--overwrite"):
        prepare_output_dir(tmp_path, resume=False)
    with pytest.raises(UserError, match="no complete checkpoint"):
        prepare_output_dir(tmp_path, resume=True)


def test_a_full_disk_is_named_other_errors_are_not(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(no_space_error(full, tmp_path / "checkpoint-4")) == \
        f"no space left on device while writing {tmp_path / 'checkpoint-4'}"
    wrapped = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1110")
    wrapped.__context__ = full
    assert no_space_error(wrapped, tmp_path) is not None
    assert no_space_error(RuntimeError("unexpected pos 1216 vs 1110"), tmp_path) is None  # plenty of space here
    assert no_space_error(ValueError("bad"), tmp_path) is None


# ---- evaluation of a broken model ------------------------------------------------------------------------
def test_nan_embeddings_score_nan_never_100_and_tables_show_it():
    sim = torch.full((4, 8), float("nan"))
    metrics = retrieval_metrics(sim, torch.arange(8) // 2)
    assert metrics.keys() >= {"txt_r1", "img_r1", "r_mean"} and all(v != v for v in metrics.values())
    top = topk_accuracy(torch.full((5, 3), float("nan")), torch.zeros(5, dtype=torch.long), ks=(1,))
    assert top["zeroshot_top1"] != top["zeroshot_top1"]
    assert retrieval_metrics(torch.eye(4), torch.arange(4))["txt_r1"] == 100.0  # a finite model still scores
    assert [_format(_raw_cell(v), False) for v in (float("nan"), float("inf"), "N/A", 41.234)] == \
        ["nan", "inf", "N/A", "41.23"]
    assert _format(Cell(), False) == "n/a"


# ---- preemption and the wall-clock cadence ---------------------------------------------------------------
_SIGNALS = """
import os, signal, sys, time
from tempnet.train import signals
from tempnet.train.signals import Preempted, Preemption

signals.DUPLICATE_S = 60.0  # "within the window" holds however slowly this process runs
def send(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.2)

try:
    with Preemption() as p:
        send(signal.SIGUSR1)
        assert p.signum == signal.SIGUSR1 and p.requested() == signal.SIGUSR1, p.signum
        p._at -= 100
        send(signal.SIGTERM)  # before the save began: the same preemption, however late
        p.saving, p._at = True, time.monotonic()
        send(signal.SIGTERM)  # the save is under way, within DUPLICATE_S of the first: delivered twice, ignored
        print("still running", flush=True)
        p._at -= 100
        if sys.argv[1] == "after":
            p.saved = True
            send(signal.SIGINT)  # the save is done: the process is exiting with 128 + the first signal
            raise Preempted("preempted", p.signum)
        send(signal.SIGINT)  # the save is under way, long after the first: abort at once
        print("not aborted", flush=True)
except Preempted as exc:
    send(signal.SIGTERM)  # the handlers stay after a preemption: a repeated signal does not kill the process
    print("exiting", flush=True)
    sys.exit(exc.status)
"""


@pytest.mark.parametrize("when, status, printed", [("during", 128 + 2, "still running\n"),
                                                    ("after", 128 + 10, "still running\nexiting\n")])
def test_the_second_signal_window(when, status, printed):
    proc = subprocess.run([sys.executable, "-c", _SIGNALS, when], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status and proc.stdout == printed, (proc.returncode, proc.stdout, proc.stderr)
    assert ("second signal (SIGINT)" in proc.stderr) == (when == "during")


def test_the_wall_clock_cadence_asks_for_a_save(tmp_path):
    from tempnet.train.protocol import Protocol

    run = Protocol(tmp_path, "cpu", lambda path: None, lambda step: {}, None, 1, save_every_minutes=2)
    now = [run._last_save]
    run._clock = lambda: now[0]
    run.after_step(1, torch.tensor(1.0))
    assert not run.time_due and not run.signum
    now[0] += 119  # minutes, not seconds: not yet
    run.after_step(2, torch.tensor(1.0))
    assert not run.time_due
    now[0] += 2
    run.after_step(3, torch.tensor(1.0))
    assert run.time_due
