"""The fault tests' runs: the real `train.py` as a subprocess in its own session, with a fault placed from
inside the trainer by a small wrapper (SIGKILL itself after a checkpoint's files are written and before its
manifest, or once the best-checkpoint copy is done; SIGKILL or a signal to its process group in the middle of
a step: updated, not yet logged), and what the runs wrote."""

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


def wrapper(tmp_path):
    """The fault wrapper as a file: `python fault.py POINT WHERE train.py ARGS...`."""
    path = tmp_path / "fault.py"
    path.write_text(textwrap.dedent(_WRAPPER))
    return path


def faulty(tmp_path, point: str, where: int, argv: list, expect: int, **kw):
    """`train.py argv` with a fault at POINT (checkpoint, best, step, SIGTERM, SIGINT, ...) WHERE (a step)."""
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
