"""Golden loss curves: a tiny training run's numbers against a committed copy (torchtitan's guard for refactors).

A curve is a JSON file {"steps": [{"step": 1, "loss": ..., "ce": ..., "tau_mean": ...}, ...], "eval": {...}}:
per logged step the loss, ce (CLIP: the contrastive term) and tau statistics of the run's metrics.jsonl, and
the numbers of its eval.json (CLIP's retrieval and zero-shot recalls), when there is one.

    python scripts/loss_compare.py A B [--rtol 1e-6]

A and B are curve files, run directories (metrics.jsonl, eval.json) or folders of curve files (compared by
file name). For each pair it prints the first step and key that moved by more than rtol (relative) and the
largest relative difference; exit status 1 when something moved, 0 when everything agrees.

The suite compares every launch script's tiny run (tests/experiments/test_launch_scripts.py) and the demo's
runs (tests/test_demo.py) to tests/assets/losses/ at RTOL. A change meant to move numbers regenerates them, in
the same commit, with the reason in the commit message:

    python -m pytest tests/experiments/test_launch_scripts.py tests/test_demo.py --update-golden
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tempnet.errors import UserError, run_cli

#: Tolerance of the suite's comparison (fp32), relative to each key's largest |value| over the curve: 23x the
#: largest spread measured on the launch-script runs between CPU kernels (ATEN_CPU_CAPABILITY=default, avx2, avx512;
#: 1 or 2 threads): 1.6e-7 LLM, 4.3e-7 CLIP (tests/README.md; the demo's longer runs use 5e-5). A real change moves
#: far more (e.g. 9e-5).
RTOL = 1e-5
#: eval.json entries that are positions, not numbers a change could move.
_NOT_RESULTS = ("epoch", "step")


def recorded(key: str) -> bool:
    """Whether a metrics.jsonl key belongs to the curve: the loss, its ce / contrastive term, tau statistics."""
    return key in ("loss", "ce", "contrastive") or key.startswith("tau_")


def curve(run_dir: str | Path) -> dict:
    """The curve of a run directory: its metrics.jsonl steps (recorded keys only) and its eval.json numbers."""
    run_dir = Path(run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [{"step": r["step"], **{k: v for k, v in r.items() if recorded(k)}}
             for r in map(json.loads, filter(str.strip, lines))]
    out = {"steps": steps}
    if (run_dir / "eval.json").is_file():
        evaluation = json.loads((run_dir / "eval.json").read_text())
        out["eval"] = {k: v for k, v in evaluation.items()
                       if k not in _NOT_RESULTS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def load(path: str | Path) -> dict:
    """A curve file, or the curve of a run directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "metrics.jsonl").is_file():
            raise UserError(f"{path}: not a run directory (no metrics.jsonl)")
        return curve(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a curve file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise UserError(f"{path}: not a curve file (no \"steps\" list)")
    return data


def save(data: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _scales(golden: dict, new: dict) -> dict[str, float]:
    """Per step key, the largest |value| over both curves: a loss that falls near 0 is compared on its own scale."""
    out: dict[str, float] = {}
    for r in golden["steps"] + new["steps"]:
        for k, v in r.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[k] = max(out.get(k, 0.0), abs(v))
    return out


def _pairs(golden: dict, new: dict):
    """(where, key, golden value, new value, scale) in order: step by step, then the evaluation."""
    scales = _scales(golden, new)
    for g, n in zip(golden["steps"], new["steps"]):
        for key in sorted(set(g) | set(n)):
            yield f"step {g['step']}", key, g.get(key), n.get(key), scales.get(key, 0.0)
    for key in sorted(set(golden.get("eval", {})) | set(new.get("eval", {}))):
        yield "eval", key, golden.get("eval", {}).get(key), new.get("eval", {}).get(key), 0.0


def _relative(a: float, b: float, scale: float) -> float:
    """|a - b| relative to the key's scale over the curve (at least max(|a|, |b|))."""
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b), scale)


def first_moved(golden: dict, new: dict, rtol: float = RTOL) -> str | None:
    """The first step and key where `new` differs from `golden` by more than rtol (relative), or None."""
    steps = [s["step"] for s in golden["steps"]], [s["step"] for s in new["steps"]]
    if steps[0] != steps[1]:
        return f"logged steps {steps[0]} -> {steps[1]}"
    for where, key, a, b, scale in _pairs(golden, new):
        if a is None or b is None:
            return f"{where}, {key}: {'missing' if a is None else a} -> {'missing' if b is None else b}"
        if not (math.isfinite(a) and math.isfinite(b)) and not (a == b or (math.isnan(a) and math.isnan(b))):
            return f"{where}, {key}: {a!r} -> {b!r}"
        if _relative(a, b, scale) > rtol:
            return f"{where}, {key}: {a!r} -> {b!r} (relative {_relative(a, b, scale):.2e} > {rtol:g})"
    return None


def max_relative(golden: dict, new: dict) -> float:
    """The largest relative difference (on each key's scale) over every key both curves hold (finite values)."""
    diffs = [_relative(a, b, scale) for _, _, a, b, scale in _pairs(golden, new)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    return max(diffs, default=0.0)


def _named(path: Path) -> dict[str, Path]:
    """name -> curve: a folder of *.json curve files, or one curve file / run directory under its own name."""
    if path.is_dir() and not (path / "metrics.jsonl").is_file():
        found = {p.stem: p for p in sorted(path.glob("*.json"))}
        if not found:
            raise UserError(f"{path}: no curve files (*.json) and no metrics.jsonl")
        return found
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    return {path.stem: path}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="golden curve file, run directory or folder of curve files")
    p.add_argument("b", type=Path, help="the same kind of thing to compare against a")
    p.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance (default {RTOL:g})")
    args = p.parse_args(argv)
    a, b = _named(args.a), _named(args.b)
    if len(a) == 1 and len(b) == 1:  # two single curves: compared whatever their names
        a, b = {"curve": next(iter(a.values()))}, {"curve": next(iter(b.values()))}
    common = sorted(set(a) & set(b))
    if not common:
        raise UserError(f"no curve names in common between {args.a} and {args.b}")
    moved = 0
    for name in sorted(set(a) | set(b)):
        if name not in common:
            print(f"{name}: only in {args.a if name in a else args.b}")
            continue
        ga, gb = load(a[name]), load(b[name])
        where = first_moved(ga, gb, args.rtol)
        moved += where is not None
        print(f"{name}: {'moved at ' + where if where else 'agrees'}; max relative difference "
              f"{max_relative(ga, gb):.2e}")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
