"""The outputs of the harness part of `--compare-temperatures`: DIR/harness.json, harness.md and harness.png."""

from __future__ import annotations

import math
from pathlib import Path

from tempnet.demo.harness import METRICS

__all__ = ["aggregate_harness", "render_harness", "plot_harness", "ARGMAX_ONLY"]

#: The scores a positive per-position tau cannot move (each is an argmax of one position's distribution).
ARGMAX_ONLY = (("last_token", "acc"),)
_LOWER_IS_BETTER = {"perplexity", "word_perplexity"}


def aggregate_harness(per_seed: list[dict]) -> dict:
    """[{setting: {method: {task: {metric: value}}}}] per seed -> the same tree with the mean over seeds and,
    with more than one seed, `METRIC_std` (sample std) beside it."""
    from tempnet.demo.report import mean_std

    out = {}
    for setting, methods in per_seed[0].items():
        out[setting] = {}
        for method, tasks in methods.items():
            out[setting][method] = {}
            for task, metrics in tasks.items():
                cell = {}
                for metric in metrics:
                    mean, std = mean_std([s[setting][method][task][metric] for s in per_seed])
                    cell[metric] = mean
                    if len(per_seed) > 1:
                        cell[f"{metric}_std"] = std
                out[setting][method][task] = cell
    return out


def _cell(cell: dict, metric: str) -> str:
    v = cell.get(metric)
    if v is None:
        return "n/a"
    std = cell.get(f"{metric}_std")
    return f"{v:.4g}" + ("" if std is None else f" ± {std:.2g}")


def render_harness(harness: dict, n_seeds: int, what: str) -> str:
    """One markdown table per setting: methods as rows, every task's metrics as columns; then how to read it."""
    lines = []
    for setting, methods in harness.items():
        tasks = [t for t in METRICS if any(t in m for m in methods.values())]
        cols = [(t, m) for t in tasks for m in METRICS[t]]
        lines += [f"### lm-eval on {what}: {setting}", "",
                  "| method | " + " | ".join(f"{t} {m}" for t, m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for method, rec in methods.items():
            lines.append(f"| {method} | " + " | ".join(_cell(rec.get(t, {}), m) for t, m in cols) + " |")
        moved = [f"{t} {m}" for t, m in ARGMAX_ONLY if (t, m) in cols and len(
            {round(rec[t][m], 12) for name, rec in methods.items() if name != "bayes"}) > 1]
        lines += ["", "Unchanged by every temperature rule (an argmax of one position): "
                  + ", ".join(f"{t} {m}" for t, m in ARGMAX_ONLY if (t, m) in cols)
                  + (f"; MOVED: {', '.join(moved)}" if moved else " (identical in every row above)"), ""]
    spread = f"mean ± sample std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    lines += [f"_{spread}; lm-evaluation-harness `simple_evaluate` with the `tempnet` model and each method's logits "
              "processor (the parameters chosen on validation); acc / acc_norm: lm-eval's multiple choice (summed "
              "log-likelihood, or divided by the choice's characters); last_token: LAMBADA-style perplexity and acc "
              "(the target is the greedy token); rolling: word perplexity (one word per token). bayes: the scorer "
              "that knows p* on the same items (the ceiling)._", ""]
    return "\n".join(lines)


def plot_harness(harness: dict, path: Path) -> Path:
    """One panel per (task, metric), a bar per method and setting, the Bayes ceiling as a dashed line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(t, m) for t in METRICS for m in METRICS[t] if any(t in r for s in harness.values() for r in s.values())]
    settings = list(harness)
    methods = [m for m in dict.fromkeys(m for s in settings for m in harness[s]) if m != "bayes"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 0.32 * len(methods) + 2.2), squeeze=False)
    for ax, (task, metric) in zip(axes[0], cols):
        for k, setting in enumerate(settings):
            ys, xs, errs = [], [], []
            for i, method in enumerate(methods):
                cell = harness[setting].get(method, {}).get(task)
                if cell is not None and cell.get(metric) is not None and math.isfinite(cell[metric]):
                    ys.append(i + 0.38 * (k - 0.5 * (len(settings) - 1)))
                    xs.append(cell[metric])
                    err = cell.get(f"{metric}_std") or 0
                    errs.append(err if math.isfinite(err) else 0)  # a seed's blow-up: the mean's bar, no error bar
            ax.barh(ys, xs, xerr=errs, height=0.36, color=f"C{k}", label=setting)
        bayes = harness[settings[0]].get("bayes", {}).get(task, {}).get(metric)
        if bayes is not None:
            ax.axvline(bayes, c="k", ls="--", lw=1, label="bayes (knows p*)")
        values = [harness[s][m][task][metric] for s in settings for m in harness[s] if task in harness[s][m]]
        values = [v for v in values if v is not None and math.isfinite(v)]  # an infinite perplexity: no bar
        if metric in _LOWER_IS_BETTER:  # perplexities span orders of magnitude where a rule breaks
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            low = 0.8 * min(values + [bayes or math.inf])  # a rule's blow-up (1e254) runs off the axis at 1e4 x low
            ax.set_xlim(low, min(1.25 * max(values), 1e4 * low))
        else:
            ax.set_xlim(0.0, 1.08 * max(values + [bayes or 0.0]) + 1e-9)  # bars start at 0
        ax.set_yticks(range(len(methods)), methods if ax is axes[0][0] else [""] * len(methods), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{task} {metric}" + (" (lower better)" if metric in _LOWER_IS_BETTER else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
