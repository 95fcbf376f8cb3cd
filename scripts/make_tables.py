"""Print the paper's tables (LLM, ablation, AlpacaEval, CLIP) from a results directory.

    python scripts/make_tables.py results            # markdown, our rows only
    python scripts/make_tables.py results --paper    # plus the paper's numbers, rows marked "(paper)"
    python scripts/make_tables.py results --json     # machine-readable
    python scripts/make_tables.py results --metric hellaswag=acc   # another lm-eval metric for a task

Layout: RESULTS_DIR/llm/<row>/ (lm-eval --output_path), RESULTS_DIR/clip/<row>/eval.json (Bimodal-CL),
RESULTS_DIR/clip_benchmark/<row>/eval_results.jsonl (scripts/eval_clip_benchmark.py),
RESULTS_DIR/alpaca/<row>/ (model_outputs.json + alpaca_eval's leaderboard.csv); see tempnet.eval.tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tempnet.errors import UserError, run_cli
from tempnet.eval.tables import build_tables, to_json, to_markdown


def _demo_hint(results_dir: str) -> str:
    """Where the tiny demo's table inputs are: its DIR/tables/ (python -m tempnet.demo writes results/tiny/tables)."""
    found = sorted(str(p) for p in Path(results_dir).glob("*/tables") if (p / "llm").is_dir() or (p / "clip").is_dir())
    if found:
        return "; the demo's tables are in " + ", ".join(found) + f" (python scripts/make_tables.py {found[0]})"
    return ("; the tiny demo (python -m tempnet.demo) writes its table inputs to results/tiny/tables "
            "(python scripts/make_tables.py results/tiny/tables)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", help="the results directory (llm/, clip/, alpaca/ inside)")
    p.add_argument("--paper", action="store_true", help="add the paper's numbers as rows marked (paper)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC",
                   help="lm-eval metric for a task (repeatable), e.g. hellaswag=acc")
    args = p.parse_args(argv)
    metrics = {}
    for item in args.metric:
        task, sep, metric = item.partition("=")
        if not sep or not task or not metric:
            p.error(f"--metric expects TASK=METRIC, got {item!r}")
        metrics[task] = metric
    try:
        tables = build_tables(args.results_dir, paper=args.paper, metrics=metrics)
    except FileNotFoundError as e:
        raise UserError(f"{e}{_demo_hint(args.results_dir)}") from None
    except ValueError as e:  # a results file that is not what the layout promises
        raise UserError(str(e)) from None
    if not tables:
        raise UserError(f"no results in {args.results_dir} (expected llm/<row>/, clip/<row>/ or alpaca/<row>/); "
                        f"--paper prints the paper's numbers alone{_demo_hint(args.results_dir)}")
    print(json.dumps(to_json(tables), indent=2) if args.json else to_markdown(tables), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
