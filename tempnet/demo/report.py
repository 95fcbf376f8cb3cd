"""The demo's outputs: seed aggregation, the JSON files, the three tables and the figures.

Tables go through `tempnet.eval.tables` (the same code as scripts/make_tables.py): the LM and CLIP
results are written in the layout it reads (`tables/llm/<row>/results.json` in lm-eval's format,
`tables/clip/<row>/eval.json`), so the paper's rows appear beside ours; the tau table is built from
its `Table` / `Row` / `Cell` classes directly (it has no paper counterpart).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["mean_std", "aggregate", "write_json", "write_table_inputs", "tau_table", "render_tables", "plot_all"]

TAU_FIELDS = ("tau_mean", "tau_std", "tau_p5", "tau_p95", "spearman", "spearman_dro_optimal", "spearman_true_tau_star")


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with one value); None entries (undefined) make both None."""
    if not values or any(v is None for v in values):
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def aggregate(per_seed: list[dict], keys) -> dict:
    """{key: mean, key_std: sample std over seeds (None with one seed)} plus the per-seed records."""
    out = {}
    for key in keys:
        values = [r.get(key) for r in per_seed]
        if all(v is None for v in values):
            out[key] = None
            continue
        out[key], out[f"{key}_std"] = mean_std(values)
    out["n_seeds"] = len(per_seed)
    out["per_seed"] = per_seed
    return out


def _clean(obj):
    """JSON-safe: numpy scalars to float, NaN / inf to None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_clean(data), indent=1) + "\n")


# ---- tables ---------------------------------------------------------------------------------------------

_LM_COLUMNS = ("val_ppl", "val_ppl_tau", "true_entropy_ppl")


#: The titles of the demo's tables, stored beside them (titles.json) so scripts/make_tables.py uses them too.
TITLES = {"ablation": "Ablation, tiny GPT-2 on the demo's synthetic language: validation perplexity",
          "clip": "Tiny CLIP (Bimodal-CL debug config, synthetic image-text set): retrieval R@1 and zero-shot top-1"}


def write_table_inputs(root: Path, lm: dict, clip: dict | None) -> None:
    """The results in the layout of tempnet.eval.tables: perplexities as lm-eval `perplexity` entries
    (their "stderr" slot holds the std over seeds), CLIP metrics as Bimodal-CL eval.json keys, and the
    tables' titles (titles.json)."""
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "titles.json", TITLES)
    for row, rec in lm.items():
        results = {}
        for key in _LM_COLUMNS:
            if rec.get(key) is not None:
                results[key] = {"perplexity,none": rec[key], "perplexity_stderr,none": rec.get(f"{key}_std")}
        d = root / "llm" / row
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "results.json", {"results": results})
    for loss, rec in (clip or {}).items():
        d = root / "clip" / loss
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "eval.json", {f"synthetic/{k}": rec[k] for k in ("img_r1", "txt_r1", "zeroshot_top1")})


def _text(value, std=None, fmt="{:.3g}") -> "object":
    from tempnet.eval.tables import Cell

    if value is None:
        return Cell(text="n/a")
    return Cell(text=fmt.format(value) + ("" if std is None else " ± " + fmt.format(std)))


def tau_table(tau: dict, truth_row: dict | None):
    """How tau varies over the validation positions, one row per objective with a temperature head."""
    from tempnet.eval.tables import Column, Row, Table

    headers = {"tau_mean": "mean tau", "tau_std": "std", "tau_p5": "p5", "tau_p95": "p95",
               "spearman": "Spearman(tau, H)", "spearman_dro_optimal": "Spearman(tau, tau* model)",
               "spearman_true_tau_star": "Spearman(tau, tau* true)"}
    fields = [f for f in TAU_FIELDS if any(f in rec for rec in tau.values())]
    columns = [Column(f, headers[f], "score") for f in fields]
    rows = [Row(name, {f: _text(rec.get(f), rec.get(f"{f}_std")) for f in fields}) for name, rec in tau.items()]
    if truth_row is not None:
        rows.append(Row("source tau* (truth)", {f: _text(truth_row.get(f)) for f in fields}))
    from tempnet.demo.lm import SPREAD_THRESHOLD

    notes = ["tau at every scored validation position" + (
        "; H = the true next-token entropy; tau* model = the DRO-optimal tau of the trained model's own logits at "
        "that position (dro_optimal_tau, same rho and range); tau* true = that of the true distribution; n/a = "
        f"not reported: tau's std is at most {SPREAD_THRESHOLD:g}, one value plus numerical noise, which has no "
        "ranking (a short or --quick run can stop before TempNet spreads its tau)"
        if truth_row is not None else " (no true distribution: spread only)")]
    return Table("tau", "How the temperature varies with the next token's uncertainty (validation positions)",
                 columns, rows, notes)


def render_tables(table_root: Path, tau: dict, truth_row: dict | None, n_seeds: int, data_name: str) -> str:
    """Markdown of the LM ablation table, the tau table and the CLIP table (paper rows included)."""
    from tempnet.eval.tables import Cell, build_tables, to_markdown

    tables = {t.key: t for t in build_tables(table_root)}  # our rows only: the paper's measure other things
    for t in tables.values():  # the floor is one number for every row: shown as text, so never bold as "best"
        for row in t.rows:
            floor = row.cells.get("true_entropy_ppl")
            if floor is not None and floor.value is not None:
                row.cells["true_entropy_ppl"] = Cell(text=f"{floor.value:.2f}")
    spread = f"mean ± sample std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    if "ablation" in tables:
        t = tables["ablation"]
        t.title = f"Ablation, tiny GPT-2 on {data_name}: validation perplexity (tau = 1 / with tau)"
        t.notes = [f"{spread}; val_ppl: raw logits (tau = 1), val_ppl_tau: logits / predicted tau"
                   + (", true_entropy_ppl: exp(mean true entropy) over the same positions (the floor)"
                      if truth_row is not None else "")
                   + "; the paper's ablation reports GPT-2 125M downstream accuracy, not perplexity, so its rows are "
                     "not shown (scripts/make_tables.py --paper prints them)"]
    if "clip" in tables:
        tables["clip"].title = TITLES["clip"]
        tables["clip"].notes = [f"{spread} (means shown); IR@1 = text -> image, TR@1 = image -> text; the paper's "
                                "CC3M-trained ResNet-50 + DistilBERT rows are on other sets (Flickr30K, MSCOCO, "
                                "ImageNet), so they are not shown"]
    ordered = [tables[k] for k in ("ablation",) if k in tables] + [tau_table(tau, truth_row)]
    ordered += [tables["clip"]] if "clip" in tables else []
    return to_markdown(ordered)


# ---- figures --------------------------------------------------------------------------------------------

def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_all(out: Path, scatter: dict, truth: dict | None, samples: dict, lm_runs: dict, clip_runs: dict) -> list[Path]:
    """demo_tau_entropy.png (tau vs true entropy; synthetic language only), demo_tau_sample.png (tau per
    generated token), demo_loss_curves.png (training curves). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rng = np.random.default_rng(0)
    if truth is not None and scatter:
        fig, axes = plt.subplots(1, len(scatter), figsize=(4.2 * len(scatter), 3.6), sharey=True, squeeze=False)
        h = truth["entropy"]
        keep = rng.permutation(h.size)[:4000]
        for ax, (row, tau) in zip(axes[0], scatter.items()):
            ax.scatter(h[keep], truth["tau_star"][keep], s=4, c="0.75", label="DRO-optimal tau of the truth")
            ax.scatter(h[keep], tau[keep], s=4, c="C3", label="predicted tau")
            ax.set_title(row)
            ax.set_xlabel("true next-token entropy (nats)")
            ax.set_yscale("log")
        axes[0][0].set_ylabel("tau")
        axes[0][0].legend(loc="best", fontsize=7, markerscale=3)
        fig.tight_layout()
        written.append(out / "demo_tau_entropy.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    if samples:
        fig, ax = plt.subplots(figsize=(8, 3.4))
        for i, (row, s) in enumerate(samples.items()):
            ax.plot(range(1, len(s["tau"]) + 1), s["tau"], marker="o", ms=3, c=f"C{i}", label=f"tau, {row}")
        ax.set_xlabel("generated token")
        ax.set_ylabel("tau")
        first = next(iter(samples.values()))
        handles, labels = ax.get_legend_handles_labels()
        if first.get("entropy") is not None:
            ax2 = ax.twinx()
            ent = [np.nan if e is None else e for e in first["entropy"]]
            bars = ax2.bar(range(1, len(ent) + 1), ent, color="0.85", zorder=0, label="true entropy of the step")
            ax2.set_ylabel("true next-token entropy (nats)")
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
            handles, labels = handles + [bars], labels + ["true entropy of the step"]
        # the legend sits above the axes, so no line runs through it
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(labels), fontsize=7,
                  frameon=False)
        ax.set_title("tau per token of a sampled continuation (logits / tau, plain sampling)", pad=22)
        fig.tight_layout()
        written.append(out / "demo_tau_sample.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2 if clip_runs else 1, figsize=(11 if clip_runs else 6, 3.6), squeeze=False)
    for row, run_dir in lm_runs.items():
        m = _metrics(run_dir)
        axes[0][0].plot([r["step"] for r in m], [r["ce"] for r in m], label=row)
    axes[0][0].set(xlabel="step", ylabel="training CE of logits / tau (nats)", title="language model", yscale="log")
    if truth is not None:
        axes[0][0].axhline(float(truth["entropy"].mean()), c="k", ls="--", lw=1, label="mean true entropy")
    axes[0][0].legend(fontsize=7)
    if clip_runs:
        for loss, run_dir in clip_runs.items():  # the losses live on different scales: each relative to its start
            m = _metrics(run_dir)
            if m:
                axes[0][1].plot([r["step"] for r in m], [r["loss"] / m[0]["loss"] for r in m], label=loss)
        axes[0][1].set(xlabel="step", ylabel="training loss / its first logged value",
                       title="tiny CLIP: each loss relative to its first value")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "demo_loss_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
