"""Reading a results directory (the layout of tempnet.eval.tables): each `RESULTS_DIR/<kind>/<row>/` folder is
one row; the files below it are merged, the newest winning, so a rerun overwrites an older result."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = ["row_dirs", "oldest_first", "load_json", "read_llm_results", "read_clip_results", "read_alpaca_results",
           "alpaca_win_rate", "read_clip_benchmark_results", "finite"]


def row_dirs(results_dir: Path, kind: str) -> list[Path]:
    """The row folders of RESULTS_DIR/<kind>/, by name."""
    root = results_dir / kind
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def oldest_first(row_dir: Path, pattern: str) -> list[Path]:
    """The files of a row matching `pattern`, oldest first (so a newer result overwrites an older one)."""
    return sorted(row_dir.rglob(pattern), key=lambda p: (p.stat().st_mtime, str(p)))


def load_json(path: Path):
    """The JSON in `path`; invalid JSON is a ValueError naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_llm_results(results_dir: str | Path) -> dict[str, dict[str, dict]]:
    """{row: {task: lm-eval's metric dict}} from every `llm/<row>/**/results*.json` (newest file wins per task)."""
    out = {}
    for row_dir in row_dirs(Path(results_dir), "llm"):
        tasks: dict[str, dict] = {}
        for file in oldest_first(row_dir, "results*.json"):
            data = load_json(file)
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                raise ValueError(f"{file} has no 'results' section: is it lm-eval's output?")
            tasks.update(data["results"])
        if tasks:
            out[row_dir.name] = tasks
    return out


def read_clip_results(results_dir: str | Path) -> dict[str, dict[str, float]]:
    """{row: {"<set>/<metric>": value}} merged from every `clip/<row>/**/eval.json` (prefixed keys only)."""
    out = {}
    for row_dir in row_dirs(Path(results_dir), "clip"):
        merged: dict[str, float] = {}
        for file in oldest_first(row_dir, "eval.json"):
            merged.update({k: v for k, v in load_json(file).items() if "/" in k and not isinstance(v, (dict, list))})
        if merged:
            out[row_dir.name] = merged
    return out


def _generator(row_dir: Path) -> str | None:
    outputs = row_dir / "model_outputs.json"
    if not outputs.is_file():
        return None
    records = load_json(outputs)
    return records[0].get("generator") if records and isinstance(records[0], dict) else None


def finite(text) -> float | None:
    """float(text) if that is a finite number, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_alpaca_results(results_dir: str | Path) -> dict[str, dict[str, float] | None]:
    """{row: {"lc_win_rate", "lc_stderr", "win_rate", "win_rate_stderr"} or None (not scored)}.

    The row's generator (from its model_outputs.json, else the row name) is looked up in the first
    `leaderboard.csv` below the row; without one, the win rate is computed from `annotations.json`
    (`alpaca_win_rate`; no length control).
    """
    out = {}
    for row_dir in row_dirs(Path(results_dir), "alpaca"):
        name = _generator(row_dir) or row_dir.name
        scores = None
        for board in sorted(row_dir.rglob("leaderboard.csv")):
            with board.open(newline="") as f:
                for rec in csv.DictReader(f):
                    if rec.get("") == name or rec.get("name") == name:
                        scores = {"lc_win_rate": finite(rec.get("length_controlled_winrate")),
                                  "lc_stderr": finite(rec.get("lc_standard_error")),
                                  "win_rate": finite(rec.get("win_rate")),
                                  "win_rate_stderr": finite(rec.get("standard_error"))}
            if scores:
                break
        if scores is None:
            for ann in sorted(row_dir.rglob("annotations.json")):
                win_rate = alpaca_win_rate([finite(a.get("preference")) for a in load_json(ann)
                                            if a.get("generator_2", name) == name])
                if win_rate is not None:
                    scores = {"lc_win_rate": None, "lc_stderr": None, "win_rate": win_rate, "win_rate_stderr": None}
                    break
        out[row_dir.name] = scores
    return out


def alpaca_win_rate(preferences: list[float | None]) -> float | None:
    """The win rate (percent) of generator_2 (ours) over generator_1 (the reference) from AlpacaEval preferences,
    by alpaca_eval's rule (`get_winrate`): 1 = the reference wins, 2 = ours wins, a weighted annotator's value in
    between counts in proportion, 0 and 1.5 are draws; anything else (None, NaN, out of [1, 2]) is no preference.
    None when no annotation is a preference."""
    values = [1.5 if p == 0 else p for p in preferences if p is not None]
    values = [p for p in values if 1.0 <= p <= 2.0]
    return 100.0 * sum(p - 1.0 for p in values) / len(values) if values else None


def read_clip_benchmark_results(results_dir: str | Path) -> dict[str, dict[str, float]]:
    """{row: {task key: main metric}} from every `clip_benchmark/<row>/**/eval_results.jsonl` (newest wins)."""
    out = {}
    for row_dir in row_dirs(Path(results_dir), "clip_benchmark"):
        merged: dict[str, float] = {}
        for file in oldest_first(row_dir, "eval_results.jsonl"):
            for n, line in enumerate(file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    merged[record["key"]] = float(record["metrics"]["main_metric"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{file} line {n} is not a DataComp result line ({{key, metrics: "
                                     f"{{main_metric}}}}): {e}") from e
        if merged:
            out[row_dir.name] = merged
    return out
