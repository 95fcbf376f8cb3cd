"""The paper's tables (LLM, ablation, AlpacaEval, CLIP) from one results directory, as markdown or JSON.

Layout read (every `<row>` folder is one row of a table, named as the paper's setting):

    RESULTS_DIR/llm/<row>/**/results*.json      lm-eval's own output (`--output_path`), at any depth;
                                                several files are merged, the newest wins per task
    RESULTS_DIR/clip/<row>/**/eval.json         Bimodal-CL's evaluation; several are merged (keys
                                                `<set>/img_r1` = IR@1, `<set>/txt_r1` = TR@1,
                                                `<set>/zeroshot_top1`)
    RESULTS_DIR/clip_benchmark/<row>/**/eval_results.jsonl   scripts/eval_clip_benchmark.py (DataComp's form:
                                                one task a line; the main metric of each and their mean)
    RESULTS_DIR/alpaca/<row>/model_outputs.json + alpaca_eval's `leaderboard.csv` (or
                                                `annotations.json`) at any depth; else "not scored"

LLM rows go to a table by name: `ce`, `dro`, `tempnet_ce`, `tempnet_dro` (and a variant of one of them,
`<row>+<variant>`, e.g. `tempnet_dro+uncentred`, listed after the paper's rows) to the ablation table,
`gpt2_*`, `llama1_*`, `llama2_*` to the GPT-2, LLaMA-1 and LLaMA-2 tables, any other to "Other LLM
rows". Metric per task (`TASK_METRICS`): acc_norm for HellaSwag, ARC-c and OBQA (the length-normalised
accuracy reported for these by lm-eval-based papers), acc for the other multiple-choice tasks,
`perplexity` for lambada_openai, `word_perplexity` for wikitext; a task we do not know is shown by
acc, else word_perplexity, else perplexity. Accuracies are percentages, the average column is the mean
of a row's accuracy columns (empty when one is missing), the best value of each column among our rows
is bold (highest accuracy or score, lowest perplexity); the paper's rows are marked "(paper)".
The files are read by tempnet.eval.results; this module makes the tables and writes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from tempnet.eval.paper_numbers import PAPER
from tempnet.eval.results import (alpaca_win_rate, finite, load_json, read_alpaca_results,
                                  read_clip_benchmark_results, read_clip_results, read_llm_results)

__all__ = [
    "TASK_METRICS", "Column", "Cell", "Row", "Table", "read_llm_results", "read_clip_results",
    "read_alpaca_results", "alpaca_win_rate", "build_tables", "to_markdown", "to_json", "clip_benchmark_table",
]

#: lm-eval metric per task, in the paper's column order (LLaMA-1's extra tasks after the common seven).
TASK_METRICS = {
    "piqa": "acc", "hellaswag": "acc_norm", "arc_easy": "acc", "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm", "winogrande": "acc", "boolq": "acc", "sciq": "acc", "social_iqa": "acc",
    "mathqa": "acc", "logiqa": "acc", "swag": "acc", "lambada_openai": "perplexity", "wikitext": "word_perplexity",
    # the validation perplexities of `python -m tempnet.demo` (not lm-eval tasks; its results use the same layout)
    "val_ppl": "perplexity", "val_ppl_tau": "perplexity", "true_entropy_ppl": "perplexity",
}
_TASK_NAMES = {
    "piqa": "PIQA", "hellaswag": "HellaSwag", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA",
    "winogrande": "WinoGrande", "boolq": "BoolQ", "sciq": "SciQ", "social_iqa": "SIQA", "mathqa": "MathQA",
    "logiqa": "LogiQA", "swag": "SWAG", "lambada_openai": "LAMBADA", "wikitext": "WikiText",
    "val_ppl": "val, tau = 1", "val_ppl_tau": "val, with tau", "true_entropy_ppl": "true entropy (floor)",
}
_PERPLEXITIES = ("perplexity", "word_perplexity", "byte_perplexity")
_FALLBACK_METRICS = ("acc", "word_perplexity", "perplexity")
_SETS = {"flickr30k": "Flickr30K", "mscoco": "MSCOCO", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
         "imagenet": "ImageNet"}
_CLIP_METRICS = {"img_r1": "IR@1", "txt_r1": "TR@1", "zeroshot_top1": "top-1"}
#: Rows in the paper's order where it matters (others sort by name after these).
_ROW_ORDER = ["ce", "dro", "tempnet_ce", "tempnet_dro", "clip", "cyclip", "sogclr", "isogclr", "isogclr_tempnet"]
_ABLATION = ("ce", "dro", "tempnet_ce", "tempnet_dro")
_LLM_TABLES = [  # (key, title, row-name test)
    ("gpt2", "GPT-2 125M on OpenWebText2 (lm-eval, zero-shot)", lambda r: r.startswith("gpt2_")),
    ("ablation", "Ablation, GPT-2 from scratch: no TempNet / DRO only / TempNet only / both",
     lambda r: r.split("+", 1)[0] in _ABLATION),
    ("llama1", "LLaMA-1 7B finetuned on OpenWebText2 (lm-eval, zero-shot)", lambda r: r.startswith("llama1_")),
    ("llama2", "LLaMA-2, LLM frozen, TempNet trained (lm-eval, zero-shot)", lambda r: r.startswith("llama2_")),
]
_OTHER_LLM = ("llm", "Other LLM rows (lm-eval)")


@dataclass
class Column:
    """One column: `key` (task name, "avg", `<set>/<metric>`, "lc_win_rate"), its header, and its kind:
    "acc" (higher is better, averaged), "ppl" (lower is better), "score" (higher is better, not averaged)."""

    key: str
    header: str
    kind: str


@dataclass
class Cell:
    """A value (percent for accuracies and rates), its standard error if known, or a text instead."""

    value: float | None = None
    stderr: float | None = None
    text: str | None = None


@dataclass
class Row:
    name: str
    cells: dict[str, Cell]
    source: str = "ours"
    """"ours" (measured, from RESULTS_DIR) or "paper" (tempnet.eval.paper_numbers)."""


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


# ---- cells ------------------------------------------------------------------------------------------------

def _metric_value(result: dict, metric: str) -> tuple[float | None, float | None]:
    """(value, stderr) of `metric` in one task's lm-eval result (any filter; "none" first)."""
    keys = [f"{metric},none"] + sorted(k for k in result if k.startswith(f"{metric},") and k != f"{metric},none")
    for key in keys:
        if key in result and finite(result[key]) is not None:
            filt = key.split(",", 1)[1]
            return float(result[key]), finite(result.get(f"{metric}_stderr,{filt}"))
    return None, None


def _raw_cell(value, scale: float = 1.0) -> Cell:
    """A cell for any stored value: a finite number as a number; NaN, infinity or a non-number as its text
    ("nan", "inf", "N/A"), so a broken or unscored result is shown as such, never as a blank cell."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return Cell(float(value) * scale)
    return Cell(text=str(value).lower() if isinstance(value, float) else str(value))


def _task_metric(task: str, result: dict, metrics: dict[str, str]) -> str | None:
    if task in metrics:
        return metrics[task]
    for metric in _FALLBACK_METRICS:
        if _metric_value(result, metric)[0] is not None:
            return metric
    return None


def _llm_row_cells(tasks: dict[str, dict], metrics: dict[str, str]) -> tuple[dict[str, Cell], dict[str, str]]:
    """({task: Cell}, {task: metric}) of one row: accuracies in percent, perplexities as they are."""
    cells, used = {}, {}
    for task, result in tasks.items():
        metric = _task_metric(task, result, metrics)
        if metric is None:
            continue
        value, stderr = _metric_value(result, metric)
        if value is None:
            raw = [result[k] for k in result if k.split(",", 1)[0] == metric]
            if raw:  # present but not a finite number
                cells[task], used[task] = _raw_cell(raw[0]), metric
            continue
        scale = 1.0 if metric in _PERPLEXITIES else 100.0
        cells[task] = Cell(value * scale, None if stderr is None else stderr * scale)
        used[task] = metric
    return cells, used


def _task_order(task: str) -> tuple[int, str]:
    order = list(TASK_METRICS)
    return (order.index(task), task) if task in order else (len(order), task)


def _row_order(name: str) -> tuple[int, str]:
    return (_ROW_ORDER.index(name), name) if name in _ROW_ORDER else (len(_ROW_ORDER), name)


def _merge_rows(ours: dict[str, dict[str, Cell]], paper: dict[str, dict[str, float]]) -> list[Row]:
    """Our rows and the paper's, sorted by name, each paper row right after ours of the same name."""
    rows = []
    for name in sorted(set(ours) | set(paper), key=_row_order):
        if name in ours:
            rows.append(Row(name, ours[name]))
        if name in paper:
            rows.append(Row(name, {k: Cell(v) for k, v in paper[name].items()}, source="paper"))
    return rows


# ---- the tables -------------------------------------------------------------------------------------------

def _llm_tables(results_dir: Path, paper: bool, metrics: dict[str, str]) -> list[Table]:
    results = read_llm_results(results_dir)
    groups: dict[str, list[str]] = {key: [] for key, _, _ in _LLM_TABLES}
    groups[_OTHER_LLM[0]] = []
    for row in results:
        key = next((k for k, _, test in _LLM_TABLES if test(row)), _OTHER_LLM[0])
        groups[key].append(row)
    tables = []
    for key, title in [(k, t) for k, t, _ in _LLM_TABLES] + [_OTHER_LLM]:
        ours, used = {}, {}
        for row in groups[key]:
            ours[row], row_used = _llm_row_cells(results[row], metrics)
            for task, metric in row_used.items():
                used.setdefault(task, set()).add(metric)
        paper_rows = PAPER.get(key, {}) if paper else {}
        if not ours and not paper_rows:
            continue
        tasks = set(used) | {c for cells in paper_rows.values() for c in cells if c != "avg"}
        kinds = {t: ("ppl" if (metrics.get(t) or next(iter(used.get(t, {"acc"})))) in _PERPLEXITIES else "acc")
                 for t in tasks}
        acc = sorted((t for t in tasks if kinds[t] == "acc"), key=_task_order)
        ppl = sorted((t for t in tasks if kinds[t] == "ppl"), key=_task_order)
        columns = [Column(t, _TASK_NAMES.get(t, t), "acc") for t in acc]
        if acc or any("avg" in cells for cells in paper_rows.values()):
            columns.append(Column("avg", "Avg.", "score"))
        columns += [Column(t, f"{_TASK_NAMES.get(t, t)} (ppl)", "ppl") for t in ppl]
        for cells in ours.values():
            if acc and all(t in cells and cells[t].value is not None for t in acc):
                cells["avg"] = Cell(sum(cells[t].value for t in acc) / len(acc))
        shown = [f"{_TASK_NAMES.get(t, t)} {'/'.join(sorted(used.get(t, {metrics.get(t, '')})))}" for t in acc + ppl]
        notes = ["metrics: " + ", ".join(shown)] if shown else []
        tables.append(Table(key, title, columns, _merge_rows(ours, paper_rows), notes))
    return tables


def _clip_table(results_dir: Path, paper: bool) -> Table | None:
    ours = {row: {k: _raw_cell(v) for k, v in values.items()} for row, values in read_clip_results(results_dir).items()}
    paper_rows = PAPER["clip"] if paper else {}
    if not ours and not paper_rows:
        return None
    keys = {k for cells in list(ours.values()) + list(paper_rows.values()) for k in cells
            if k.split("/", 1)[1] in _CLIP_METRICS}
    sets = list(_SETS)

    def order(key: str):
        name, metric = key.split("/", 1)
        kind = 1 if metric == "zeroshot_top1" else 0
        return (kind, sets.index(name) if name in sets else len(sets), name, list(_CLIP_METRICS).index(metric))

    columns = [Column(k, f"{_SETS.get(k.split('/')[0], k.split('/')[0])} {_CLIP_METRICS[k.split('/', 1)[1]]}",
                      "score") for k in sorted(keys, key=order)]
    ours = {row: {k: c for k, c in cells.items() if k in keys} for row, cells in ours.items()}
    return Table("clip", "CLIP on CC3M: zero-shot retrieval (IR@1, TR@1) and classification (top-1)", columns,
                 _merge_rows(ours, paper_rows), ["IR@1 = text -> image recall@1, TR@1 = image -> text recall@1"])


def _alpaca_table(results_dir: Path, paper: bool) -> Table | None:
    scored = read_alpaca_results(results_dir)
    paper_rows = PAPER["alpaca"] if paper else {}
    if not scored and not paper_rows:
        return None
    ours = {}
    for row, s in scored.items():
        if s is None:
            ours[row] = {"lc_win_rate": Cell(text="not scored"), "win_rate": Cell(text="not scored")}
        else:
            ours[row] = {k: Cell(s[k], s[e]) for k, e in (("lc_win_rate", "lc_stderr"), ("win_rate", "win_rate_stderr"))
                         if s[k] is not None}
    columns = [Column("lc_win_rate", "LC win rate", "score"), Column("win_rate", "Win rate", "score")]
    return Table("alpaca", "AlpacaEval (vs. the reference outputs), percent", columns, _merge_rows(ours, paper_rows),
                 ["scored with `alpaca_eval --model_outputs RESULTS_DIR/alpaca/<row>/model_outputs.json`"])


def build_tables(results_dir: str | Path, paper: bool = False, metrics: dict[str, str] | None = None) -> list[Table]:
    """Every table that has rows: LLM tables (GPT-2, ablation, LLaMA-1, LLaMA-2, other), AlpacaEval, CLIP.

    paper: add the paper's rows (marked "(paper)"); metrics: {task: lm-eval metric} overriding TASK_METRICS.
    An optional RESULTS_DIR/titles.json ({table key: title}) replaces the default titles.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    tables = _llm_tables(results_dir, paper, {**TASK_METRICS, **(metrics or {})})
    tables += [t for t in (_alpaca_table(results_dir, paper), _clip_table(results_dir, paper)) if t is not None]
    tables += [t for t in (clip_benchmark_table(results_dir),) if t is not None]
    titles = load_json(results_dir / "titles.json") if (results_dir / "titles.json").is_file() else {}
    for t in tables:  # a results directory may name its own tables (the tiny demo's are not the paper's setting)
        t.title = titles.get(t.key, t.title)
    return tables


def clip_benchmark_table(results_dir: Path) -> Table | None:
    """The CLIP_benchmark / DataComp tasks of RESULTS_DIR/clip_benchmark/ (scripts/eval_clip_benchmark.py)."""
    results = read_clip_benchmark_results(results_dir)
    if not results:
        return None
    keys = sorted({k for tasks in results.values() for k in tasks})
    rows = []
    for name in sorted(results, key=_row_order):
        cells = {k: Cell(100 * v) for k, v in results[name].items() if not math.isnan(v)}
        values = [results[name].get(k, math.nan) for k in keys]
        if not any(math.isnan(v) for v in values):
            cells["avg"] = Cell(100 * sum(values) / len(values))
        rows.append(Row(name, cells))
    columns = [Column(k, k, "score") for k in keys] + [Column("avg", "Average", "score")]
    return Table("clip_benchmark", "CLIP_benchmark / DataComp tasks: main metric, percent", columns, rows,
                 ["main metric: acc1 (classification), mean of image and text recall@1 (retrieval); "
                  "Average over the tasks, empty when one is missing"])


# ---- output -----------------------------------------------------------------------------------------------

def _best(table: Table, column: Column) -> float | None:
    values = [r.cells[column.key].value for r in table.rows
              if r.source == "ours" and column.key in r.cells and r.cells[column.key].value is not None]
    if len(values) < 2:
        return None  # one row has no "best"
    return min(values) if column.kind == "ppl" else max(values)


def _format(cell: Cell | None, bold: bool) -> str:
    if cell is None:
        return ""
    if cell.value is None:
        return cell.text if cell.text is not None else "n/a"
    text = f"{cell.value:.2f}" + ("" if cell.stderr is None else f" ± {cell.stderr:.2f}")
    return f"**{text}**" if bold else text


def to_markdown(tables: Iterable[Table]) -> str:
    """The tables as markdown: a "### title" heading, one row per setting, notes in italics below."""
    parts = []
    for table in tables:
        best = {c.key: _best(table, c) for c in table.columns}
        lines = [f"### {table.title}", "", "| row | " + " | ".join(c.header for c in table.columns) + " |",
                 "|---|" + "---|" * len(table.columns)]
        for row in table.rows:
            name = row.name + (" (paper)" if row.source == "paper" else "")
            cells = [_format(row.cells.get(c.key), row.source == "ours" and best[c.key] is not None
                             and c.key in row.cells and row.cells[c.key].value == best[c.key])
                     for c in table.columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if table.notes:
            lines += [""] + [f"_{note}_" for note in table.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_json(tables: Iterable[Table]) -> list[dict]:
    """The tables as plain data: [{key, title, columns: [...], rows: [{name, source, cells}], notes}]."""
    return [asdict(t) for t in tables]
