"""Run many command lines of the project's entry points in one interpreter, each exactly as
`python SCRIPT ARGV...` (or `python -m MODULE ARGV...`) would: `__main__` code, sys.argv, stderr.

    python tests/experiments/entry_points.py CASES.json  ->  {"name": {"code": int, "stderr": str}, ...}

CASES.json maps a name to [target, argv]; a target ending in .py is a script path, else a module. An
uncaught exception is printed as the interpreter would (a traceback) with exit status 1, so the bad-input
tests see what a user sees while paying the imports once instead of once per command.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import traceback


def run_case(target: str, argv: list[str]) -> dict:
    err, saved = io.StringIO(), sys.argv
    sys.argv = [target, *argv]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001  (what the interpreter would print)
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved
    return {"code": code, "stderr": err.getvalue()}


def run_cases(cases: dict, spec, env: dict | None = None, timeout: int = 900) -> dict:
    """For the tests: CASES ({name: [target, argv]}) written to the JSON file SPEC and run by this script in one
    interpreter from the repository root with ENV (default: the suite's offline environment); it must exit 0.
    Returns {name: {"code", "stderr"}}."""
    import subprocess
    from pathlib import Path

    from helpers import OFFLINE_ENV

    Path(spec).write_text(json.dumps({name: [str(t), [str(a) for a in argv]] for name, (t, argv) in cases.items()}))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec)], cwd=repo,
                          env=OFFLINE_ENV if env is None else env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps({name: run_case(target, argv) for name, (target, argv) in cases.items()}))
