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


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps({name: run_case(target, argv) for name, (target, argv) in cases.items()}))
