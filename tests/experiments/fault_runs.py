"""The fault tests' runs: the real `train.py` as a subprocess in its own session, with a fault placed from
inside the trainer by a small wrapper, at a known point on every machine: SIGKILL itself after a checkpoint's
files are written and before its manifest, once the best-checkpoint copy is done, or in the middle of a step
(updated, not yet logged); every weight NaN after a step's update (divergence that does not depend on where
chaotic float dynamics go); a signal to the job (its process group, loader workers included) or to one rank
once the trainer is provably inside its loop or has written config.yaml, and again after the save."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from lm_runs import ENV, REPO, metrics

_WRAPPER = """
import os, runpy, signal, subprocess, sys
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
elif point == "nan":  # the update of step WHERE leaves every weight NaN (not a save step): step WHERE+1 diverges
    import torch
    import tempnet.train.protocol as run
    optimizers, init, after_step = [], torch.optim.Optimizer.__init__, run.Protocol.after_step
    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        optimizers.append(self)
    def poisoning_after_step(self, step, *args, **kwargs):
        after_step(self, step, *args, **kwargs)
        if step == int(where):
            with torch.no_grad():
                for group in (g for o in optimizers for g in o.param_groups):
                    for param in group["params"]:
                        param.fill_(float("nan"))
    torch.optim.Optimizer.__init__, run.Protocol.after_step = recording_init, poisoning_after_step
elif point == "step":  # SIGKILL in step WHERE, after its update, before it is logged or saved
    import tempnet.train.logging as logging
    log = logging.MetricsLogger.log
    def dying_log(self, step, metrics):
        if step == int(where) and os.environ.get("RANK", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        return log(self, step, metrics)
    logging.MetricsLogger.log = dying_log
else:  # SIG[:rank1][:twice]: the signal to the job in step WHERE (updated, not yet logged) or once config.yaml
    # is written (WHERE=start); the job is the process group (DataLoader workers included), torchrun's under
    # torchrun; rank1: to rank 1's process only; twice: the job gets it again after the preemption checkpoint
    name, *options = point.split(":")
    sig = getattr(signal, name)
    def send():
        if "rank1" in options:
            os.kill(os.getpid(), sig)
        else:  # from another process, as a scheduler sends it (`kill` returns once every process has it)
            group = os.getpgid(os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else 0)
            subprocess.run(["kill", "-s", name, "--", f"-{group}"])
    sender = "1" if "rank1" in options else "0"
    if where == "start":
        import tempnet.config as config
        save_config = config.save_config
        def signalling_save_config(cfg, path):
            save_config(cfg, path)
            if Path(path).name == "config.yaml" and not Path(path).parent.name.startswith("checkpoint-"):
                send()
        config.save_config = signalling_save_config  # before the trainers import it
    else:
        import tempnet.train.logging as logging
        log = logging.MetricsLogger.log
        def signalling_log(self, step, metrics):
            if step == int(where) and os.environ.get("RANK", "0") == sender:
                send()
            return log(self, step, metrics)
        logging.MetricsLogger.log = signalling_log
    if "twice" in options:
        import time
        import tempnet.train.protocol as run
        release = run.release
        def signalling_release(lock):
            if os.environ.get("RANK", "0") == "0":
                send()
                time.sleep(0.5)  # delivered (and handled) before the run goes on
            release(lock)
        run.release = signalling_release
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def python_run(*args, expect: int = 0, env=None, launcher=None):
    """Run from the repository root in its own session (a signal to its process group reaches nothing else)."""
    proc = subprocess.run([*(launcher or [sys.executable]), *map(str, args)], cwd=REPO, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=400, start_new_session=True)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{proc.stdout[-2000:]}\n" \
                                      f"{proc.stderr[-4000:]}"
    if expect not in (0, -signal.SIGKILL):
        assert launcher or "Traceback" not in proc.stderr, proc.stderr[-3000:]  # torchrun prints its own
    return proc


def error_line(proc) -> str:
    """The one `error: ...` line of a run's stderr."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def cli_error_line(cli, args, capsys) -> str:
    """A script's CLI wrapper (`run_cli` / `run_trainer`) called in this process with ARGS: it must exit 2 after
    one `error:` line on stderr, which is returned (capsys: the test's fixture)."""
    import pytest

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli(list(map(str, args)))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and len(errors) == 1, (exit_.value.code, errors)
    return errors[0]


def wrapper(tmp_path):
    """The fault wrapper as a file: `python fault.py POINT WHERE train.py ARGS...`."""
    path = tmp_path / "fault.py"
    path.write_text(textwrap.dedent(_WRAPPER))
    return path


def faulty(tmp_path, point: str, where: int, argv: list, expect: int, **kw):
    """`train.py argv` with a fault at POINT (checkpoint, best, nan, step, SIGTERM[:rank1][:twice], SIGINT, ...)
    WHERE (a step; for a signal also `start`: once config.yaml is written)."""
    return python_run(wrapper(tmp_path), point, where, *argv, expect=expect, **kw)


def hashes(root):
    """{relative path: sha256} of every file below root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def same_run(a, b, drop=("tokens_per_s", "sec_per_step")):
    """Two run directories logged the same values (all but speed)."""
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))


def same_weights(a, b):
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)




def reference_run(tmp_path_factory, name: str, argv_of) -> Path:
    """The uninterrupted run `argv_of(out)` (a module fixture's: every fault test compares with it)."""
    out = tmp_path_factory.mktemp(name) / "reference"
    python_run(*argv_of(out))
    return out
