"""`python -m tempnet.demo`: the whole method on a laptop, in minutes, on data whose truth is known.

    python -m tempnet.demo [--quick] [--output-dir DIR] [--data PATH] [--seeds N]

1. A tiny GPT-2 trained by the shared LLM trainer under the paper's four ablation objectives (ce, dro,
   tempnet_ce, tempnet_dro) plus the studied pooling variant (tempnet_dro+uncentred: tempnet.pooling=
   uncentred), on one budget (same steps, seed, data), on the synthetic language of
   `tempnet.data.synthetic_lm` (or any local text with --data): validation perplexity at tau = 1 and
   with the predicted tau, beside the source's true-entropy perplexity (the floor).
2. How the predicted tau varies: spread, Spearman with the true entropy, with the DRO-optimal tau of the
   model's own logits and with that of the true distribution; a scatter plot and tau along a sample.
3. The tiny CLIP of Bimodal-CL's debug config under clip, sogclr, isogclr, isogclr_tempnet.

Writes DIR/lm.json, DIR/tau_entropy.json, DIR/clip.json, DIR/run.json (settings, timings, machine),
DIR/tables.md and DIR/demo_*.png, and prints the tables (Qiu et al., ICML 2024, Tables: ablation, CLIP).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

__all__ = ["main", "QUICK", "FULL"]

#: The full run and --quick: (LM steps, training documents, validation documents, CLIP epochs).
FULL = {"steps": 1000, "train_docs": 4000, "valid_docs": 256, "clip_epochs": None}
QUICK = {"steps": 120, "train_docs": 1000, "valid_docs": 32, "clip_epochs": 2}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tempnet.demo", description="The whole method at toy scale on the "
                                "CPU, on data whose truth is known (see the README).")
    p.add_argument("--quick", action="store_true", help="the same pipeline shortened to about a minute (one seed)")
    p.add_argument("--output-dir", type=Path, default=Path("results/tiny"), metavar="DIR",
                   help="where results go (default results/tiny)")
    p.add_argument("--data", type=Path, metavar="PATH", help="a local text file for the LM comparison instead of the synthetic "
                   "language (tokenizer trained on it; no true-entropy columns)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per row, reported as mean ± std (default 1)")
    hidden = argparse.SUPPRESS  # for tests and experiments: shorter or different budgets
    p.add_argument("--steps", type=int, help=hidden)
    p.add_argument("--train-docs", type=int, help=hidden)
    p.add_argument("--valid-docs", type=int, help=hidden)
    p.add_argument("--clip-epochs", type=int, help=hidden)
    p.add_argument("--no-clip", action="store_true", help=hidden)
    p.add_argument("--override", action="append", default=[], help=hidden)
    return p


def _machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def main(argv=None) -> dict:
    """Run the demo; returns {"lm", "tau", "clip", "run"} (what the JSON files hold)."""
    args = _parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("error: --seeds must be >= 1")
    budget = {**(QUICK if args.quick else FULL)}
    for key in ("steps", "train_docs", "valid_docs", "clip_epochs"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    seeds = list(range(args.seeds))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    shutil.rmtree(work, ignore_errors=True)
    t_start = time.time()
    run_info = {"command": "python -m tempnet.demo " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": _machine(), "budget": budget, "seeds": seeds, "timings_s": {}}

    from tempnet.demo import lm as L
    from tempnet.demo import report as R

    setup = L.LMSetup(steps=budget["steps"], extra=list(args.override))
    t0 = time.time()
    if args.data is None:
        corpus = L.synthetic_corpus(work / "lm_data", setup, budget["train_docs"], budget["valid_docs"])
        data_name = "the synthetic language (V = 256 bigram)"
    else:
        corpus = L.text_corpus(args.data, work / "lm_data", setup)
        data_name = f"{args.data.name}"
    run_info["timings_s"]["lm_data"] = time.time() - t0
    run_info["lm"] = {**{k: v for k, v in vars(setup).items()}, "vocab_size": corpus.vocab_size, "rho": corpus.rho,
                      "log_V": math.log(corpus.vocab_size), "validation_rows": int(len(corpus.valid)),
                      "scored_positions": int(corpus.mask.sum()), "data": data_name}
    print(f"[demo] LM data: {data_name}; model vocabulary V = {corpus.vocab_size}, log V = "
          f"{run_info['lm']['log_V']:.3f}; rho = {corpus.rho:.3f} (log {corpus.vocab_size if corpus.truth is None else 256}"
          f" - {setup.rho_gap:g}); tau in "
          f"[{setup.tau_min}, {setup.tau_max}]; {setup.steps} steps x {setup.batch_size} x {setup.seq_len} tokens; "
          f"seeds {seeds}", flush=True)

    # ---- 1 + 2: the language model rows ----------------------------------------------------------------
    per_seed = {row: [] for row in L.ROWS}
    tau_seed = {row: [] for row in L.ROWS if row != "ce"}
    scatter, samples, lm_dirs = {}, {}, {}
    t0 = time.time()
    for seed in seeds:
        for row in L.ROWS:
            print(f"[demo] LM {row} (seed {seed})", flush=True)
            run_dir = L.train_objective(row, setup, corpus, seed, work / f"lm_{row}_seed{seed}", work / "token_cache")
            ev = L.evaluate_lm(run_dir, corpus, row)
            per_seed[row].append({k: ev[k] for k in ("val_ppl", "val_ppl_tau", "true_entropy_ppl")} | {"seed": seed})
            if row in tau_seed:
                tau_seed[row].append(L.tau_stats(ev, corpus.truth) | {"seed": seed})
            if seed == seeds[0]:
                lm_dirs[row] = run_dir
                if row.startswith("tempnet"):
                    scatter[row] = ev["tau"]
                if row.startswith("tempnet_dro"):
                    samples[row] = L.generate_sample(run_dir, corpus)
    run_info["timings_s"]["lm"] = time.time() - t0
    lm = {row: R.aggregate(recs, ("val_ppl", "val_ppl_tau", "true_entropy_ppl")) for row, recs in per_seed.items()}
    # real text (--data) has no true distribution: only the spread of tau is reported
    tau_fields = ("n_positions",) + (R.TAU_FIELDS if corpus.truth is not None else R.TAU_FIELDS[:4])
    tau_rows = {row: R.aggregate(recs, tau_fields) for row, recs in tau_seed.items()}
    tau = {**{k: v for k, v in tau_rows["tempnet_dro"].items() if k != "per_seed"}, "objective": "tempnet_dro",
           "by_row": tau_rows,
           "notes": "top level: the paper's objective (tempnet_dro); by_row: every row with a temperature head. tau "
                    "at every scored validation position (head in eval mode); spearman: with the true next-token "
                    "entropy; spearman_dro_optimal: with the DRO-optimal tau computed by dro_optimal_tau on the "
                    "trained model's own logits at that position (the run's rho and tau range); "
                    "spearman_true_tau_star: with the DRO-optimal tau of the true distribution (support-restricted "
                    "logits); None: undefined (a constant tau has no ranking)"}
    truth_row = None
    if corpus.truth is not None:
        truth_row = tau["source_tau_star"] = L.truth_stats(corpus.truth)
    else:
        tau["notes"] = "--data: no true distribution, so only the spread of tau is reported"

    # ---- 3: CLIP -------------------------------------------------------------------------------------------
    clip, clip_dirs = None, {}
    if not args.no_clip:
        from tempnet.demo import clip as C

        t0 = time.time()
        clip_keys = ("r1", "zeroshot_top1", "img_r1", "txt_r1")
        clip_seed = {loss: [] for loss in C.CLIP_LOSSES}
        for seed in seeds:
            for loss in C.CLIP_LOSSES:
                print(f"[demo] CLIP {loss} (seed {seed})", flush=True)
                d = work / f"clip_{loss}_seed{seed}"
                res = C.train_clip(loss, seed, d, budget["clip_epochs"])
                clip_seed[loss].append({k: res[k] for k in clip_keys} | {"seed": seed})
                if seed == seeds[0]:
                    clip_dirs[loss] = d
        clip = {loss: R.aggregate(recs, clip_keys) for loss, recs in clip_seed.items()}
        run_info["timings_s"]["clip"] = time.time() - t0

    # ---- outputs -------------------------------------------------------------------------------------------
    R.write_json(out / "lm.json", lm)
    R.write_json(out / "tau_entropy.json", tau)
    if clip is not None:
        R.write_json(out / "clip.json", {**clip, "note": "r1 = mean of IR@1 (text -> image) and TR@1 (image -> "
                                         "text) on the synthetic retrieval set; zeroshot_top1 on its classes"})
    shutil.rmtree(out / "tables", ignore_errors=True)
    R.write_table_inputs(out / "tables", lm, clip)
    figures = R.plot_all(out, scatter, corpus.truth, samples, lm_dirs, clip_dirs)
    markdown = R.render_tables(out / "tables", tau_rows, truth_row, len(seeds), data_name)
    (out / "tables.md").write_text(markdown)
    run_info["timings_s"]["total"] = time.time() - t_start
    run_info["machine"]["load_average_at_end"] = os.getloadavg()
    run_info["figures"] = [str(f) for f in figures]
    R.write_json(out / "run.json", run_info)
    print("\n" + markdown)
    print(f"[demo] done in {run_info['timings_s']['total']:.0f} s; results in {out} (lm.json, tau_entropy.json, "
          f"{'clip.json, ' if clip else ''}tables.md, run.json, " + ", ".join(f.name for f in figures) + ")")
    return {"lm": lm, "tau": tau, "clip": clip, "run": run_info}
