"""The outputs of `--compare-temperatures`: seed aggregation, the markdown tables and the quality-diversity figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["aggregate_seeds", "render", "plot", "SETTINGS", "LABELS"]

SETTINGS = {"frozen_ce": "a model trained with plain CE, temperature rules applied to its frozen logits",
            "joint_tempnet_dro": "the model trained jointly with TempNet under the robust loss"}
LABELS = {"tau_1": "tau = 1", "best_fixed": "best fixed tau", "dynatemp": "dynatemp (llama.cpp)", "edt": "EDT",
          "tempnet_dro": "TempNet, robust loss", "tempnet_ce": "TempNet, plain CE",
          "hidden_head": "hidden-state head (AutoDeco)", "oracle_per_position": "per-position optimum (truth)",
          "dro_optimal_truth": "truth's DRO-optimal tau", "min_p": "min-p", "top_n_sigma": "top-n-sigma",
          "p_less": "p-less"}
#: The knobs of each tuned method's grid points, in order (the grids themselves are the run's, in its settings).
KNOBS = {"best_fixed": ("tau",), "dynatemp": ("T", "range", "exponent"), "edt": ("t0", "n", "theta"),
         "min_p": ("T", "min_p"), "top_n_sigma": ("T", "n"), "p_less": ("T",)}
_KEYS = ("kl_to_truth", "gap_closed", "test_ppl", "ece", "sample_true_logprob", "sample_true_logprob_mc",
         "sample_true_logprob_mc_se", "sample_entropy", "tau_mean", "tau_std", "valid_nll")


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """{setting: {method: {measure: mean, measure_std, params (per seed), per_seed}}, "checks": ...}; the
    per-position arrays and tuning curves stay out of the JSON."""
    from tempnet.demo.report import aggregate

    out = {}
    for setting in SETTINGS:
        out[setting] = {}
        for method in per_seed[0][setting]:
            recs = [{k: s[setting][method].get(k) for k in _KEYS} | {"seed": i} for i, s in enumerate(per_seed)]
            agg = aggregate(recs, _KEYS)
            params = [s[setting][method].get("params") for s in per_seed]
            if any(p is not None for p in params):
                agg["params"] = params
                agg["grid_size"] = per_seed[0][setting][method]["grid_size"]
            out[setting][method] = agg
    out["source_entropy"] = float(np.mean([s["source_entropy"] for s in per_seed]))
    out["checks"] = {k: max(s["checks"][k] for s in per_seed) for k in per_seed[0]["checks"]}
    out["hidden_head_loss_first_last"] = [s["hidden_head_loss"] for s in per_seed]
    return out


def _values(values) -> str:
    """The distinct values of one knob: listed when few, else their count, spacing and range."""
    v = sorted(set(float(x) for x in values))
    if len(v) <= 10:
        return "{" + ", ".join(f"{x:g}" for x in v) + "}"
    steps = np.diff(np.log(v)) if v[0] > 0 else np.array([np.nan])
    spacing = " log-spaced" if np.allclose(steps, steps[0], rtol=1e-3) else ""
    return f"{len(v)}{spacing} values in [{v[0]:g}, {v[-1]:g}]"


def describe_grid(method: str, grid) -> str:
    """`method (knobs) over knob in values x ...` from the grid points themselves (so the text is the run's)."""
    knobs = KNOBS[method]
    columns = list(zip(*(point if isinstance(point, (list, tuple)) else (point,) for point in grid)))
    assert len(columns) == len(knobs), (method, len(columns), knobs)
    return f"{method} ({', '.join(knobs)}) over " + " x ".join(
        f"{k} in {_values(c)}" for k, c in zip(knobs, columns)) + f" ({len(grid)} settings)"


def _cell(rec: dict, key: str, fmt: str) -> str:
    v = rec.get(key)
    if v is None:
        return "n/a"
    std = rec.get(f"{key}_std")
    return fmt.format(v) + ("" if std is None else " ± " + fmt.format(std))


def render(result: dict) -> str:
    """One markdown table per setting, methods as rows, then the grids and how to read them."""
    n = len(result["settings"]["seeds"])
    spread = f"mean ± sample std over {n} seeds" if n > 1 else "one seed"
    lines = []
    for setting, what in SETTINGS.items():
        lines += [f"### Which temperature gets closest to the truth: {setting} ({what})", "",
                  "| method | KL(p* \\|\\| q) (nats) | gap closed | test ppl | top-1 ECE | sampled: true log p | "
                  "sampled: entropy | tau mean (std) | chosen on validation (of grid size) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, rec in result[setting].items():
            params = rec.get("params")
            chosen = "" if params is None else "; ".join(str(p) for p in params) + f" (of {rec['grid_size']})"
            lines.append(f"| {method} | {_cell(rec, 'kl_to_truth', '{:.4f}')} | {_cell(rec, 'gap_closed', '{:.3g}')} | "
                         f"{_cell(rec, 'test_ppl', '{:.4g}')} | {_cell(rec, 'ece', '{:.4f}')} | "
                         f"{_cell(rec, 'sample_true_logprob', '{:.3f}')} | {_cell(rec, 'sample_entropy', '{:.3f}')} | "
                         f"{_cell(rec, 'tau_mean', '{:.3g}')} ({_cell(rec, 'tau_std', '{:.2g}')}) | {chosen} |")
        lines.append("")
    s = result["settings"]
    grids = s["grids"]
    lines += [f"_{spread}; KL, perplexity and ECE exact on {s['budget']['test_docs']} test documents (the truth p* known "
              "at every position); gap closed = (KL(tau = 1) - KL) / (KL(tau = 1) - KL(per-position optimum)); "
              f"sampled: {s['budget']['prompts']} continuations of {s['budget']['new_tokens']} tokens per method "
              f"(plain sampling through the method's logits processor), true log p = E_q[log max(p*, "
              f"{s['true_logprob_floor']:g})] per token, entropy = H(q) per token (nats). Tuned on the validation "
              f"NLL: {'; '.join(describe_grid(m, grids[m]) for m in ('best_fixed', 'dynatemp', 'edt') if m in grids)}. "
              "The samplers ("
              f"{'; '.join(describe_grid(m, grids[m]) for m in ('min_p', 'top_n_sigma', 'p_less') if m in grids)}) "
              "truncate, so their KL and perplexity are infinite (n/a) and they are tuned to the validation entropy of "
              "tau = 1 "
              "(equal diversity). tempnet_*: a fresh "
              "TempNet trained by the LLM trainer on the frozen model (joint_tempnet_dro: the model's own "
              "TempNet); references: oracle_per_position and dro_optimal_truth read the truth._", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Quality (true log-probability of sampled tokens) against diversity (their entropy), one point per method,
    one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(LABELS)}
    for ax, setting in zip(axes[0], SETTINGS):
        for method, rec in result[setting].items():
            x, y = rec.get("sample_entropy"), rec.get("sample_true_logprob")
            if x is None or y is None:
                continue
            ax.errorbar(x, y, xerr=rec.get("sample_entropy_std") or 0, yerr=rec.get("sample_true_logprob_std") or 0,
                        fmt="o", c=colours.get(method, "0.5"), label=LABELS.get(method, method), ms=6, capsize=2)
        h = result.get("source_entropy")
        if h is not None:  # sampling from the source itself: entropy H(p*), true log p = -H(p*)
            ax.plot([h], [-h], marker="*", ms=12, c="k", ls="none", label="the source itself (p*)")
        ax.set(xlabel="entropy of the sampling distribution (nats per token)",
               ylabel="true log-probability of the sampled token", title=setting)
        ax.grid(alpha=0.3)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda hl: len(hl[0]))
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Sampling quality against diversity, one point per method (higher = tokens the source finds likelier)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
