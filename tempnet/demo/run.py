"""`python -m tempnet.demo`: the whole method on a laptop, in minutes, on data whose truth is known.

    python -m tempnet.demo [--quick] [--output-dir DIR] [--data PATH] [--seeds N]
    python -m tempnet.demo --compare-temperatures [--quick] [--seeds N] [--output-dir DIR] [--data PATH]

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

--compare-temperatures runs `tempnet.demo.temperatures` instead: which temperature rule (fixed, llama.cpp's
dynamic temperature, EDT, TempNet, a hidden-state head) brings the model's next-token distribution closest
to the truth; DIR/temperatures.json, DIR/temperatures.md, DIR/temperatures.png; and what lm-evaluation-harness
measures for each (multiple choice, LAMBADA-style last token, rolling perplexity, beside the Bayes ceiling):
DIR/harness.json, .md, .png. With --data (truth unknown): harness.* on that text's last_token and rolling tasks.

The demo writes only what it knows: DIR must be new, empty, or a directory it wrote before (it holds
`.tempnet-demo`); training runs go below DIR/runs/, and only the run folders about to be rewritten are removed.
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

from tempnet.errors import UserError

__all__ = ["main", "QUICK", "FULL"]

#: The full run and --quick: (LM steps, training documents, validation documents, CLIP epochs).
FULL = {"steps": 1000, "train_docs": 4000, "valid_docs": 256, "clip_epochs": None}
QUICK = {"steps": 120, "train_docs": 1000, "valid_docs": 32, "clip_epochs": 2}
#: The file that marks a directory the demo wrote, and every name it writes there.
MARKER = ".tempnet-demo"
OUTPUTS = {MARKER, "lm.json", "tau_entropy.json", "clip.json", "run.json", "tables.md", "tables", "runs",
           "temperatures.json", "temperatures.md", "temperatures.png", "harness.json", "harness.md", "harness.png",
           "demo_tau_entropy.png", "demo_tau_sample.png",
           "demo_loss_curves.png"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tempnet.demo", description="The whole method at toy scale on the "
                                "CPU, on data whose truth is known (see the README).")
    p.add_argument("--quick", action="store_true", help="the same pipeline shortened to about a minute (one seed)")
    p.add_argument("--output-dir", type=Path, default=Path("results/tiny"), metavar="DIR",
                   help="where results go (default results/tiny)")
    p.add_argument("--data", type=Path, metavar="PATH", help="a local text file for the LM comparison instead of the synthetic "
                   "language (tokenizer trained on it; no true-entropy columns)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per row, reported as mean ± std (default 1)")
    p.add_argument("--compare-temperatures", action="store_true", help="instead: which temperature (fixed, dynatemp, "
                   "EDT, TempNet, a hidden-state head) gets closest to the true next-token distribution "
                   "(temperatures.json / .md / .png), and what lm-eval measures for each (harness.json / .md / .png); "
                   "with --data: harness.* on that text")
    hidden = argparse.SUPPRESS  # for tests and experiments: shorter or different budgets
    p.add_argument("--steps", type=int, help=hidden)
    p.add_argument("--train-docs", type=int, help=hidden)
    p.add_argument("--valid-docs", type=int, help=hidden)
    p.add_argument("--clip-epochs", type=int, help=hidden)
    p.add_argument("--no-clip", action="store_true", help=hidden)
    p.add_argument("--override", action="append", default=[], help=hidden)
    p.add_argument("--budget", action="append", default=[], help=hidden)  # KEY=INT of the comparison's budget
    return p


def _machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def prepare_output_dir(out: Path) -> None:
    """Refuse a DIR holding anything the demo did not write (it would be overwritten or removed); then mark it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    unknown = [name for name in entries if name not in OUTPUTS]
    ours = any(name in entries for name in (MARKER, "run.json", "temperatures.json", "harness.json"))
    if unknown or (entries and not ours):
        shown = ", ".join((unknown or entries)[:5]) + (" ..." if len(unknown or entries) > 5 else "")
        raise UserError(f"--output-dir {out}: holds files the demo did not write ({shown}); choose a new or empty "
                        "directory (the demo writes results and training runs there and replaces its own)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m tempnet.demo; it replaces only its own files here\n")


def _remove_own_runs(work: Path, seeds: list[int], rows, clip_losses) -> None:
    """Remove the run folders this demo is about to rewrite (and its data / token cache), nothing else."""
    names = ["lm_data", "token_cache"] + [f"lm_{row}_seed{s}" for row in rows for s in seeds]
    names += [f"clip_{loss}_seed{s}" for loss in clip_losses for s in seeds]
    for name in names:
        shutil.rmtree(work / name, ignore_errors=True)


def _budget(args) -> dict:
    """The comparison's budget: COMPARE_QUICK / COMPARE_FULL, then --steps / --train-docs / --valid-docs and
    the hidden --budget KEY=INT."""
    from tempnet.demo.harness import MC_CHOICES
    from tempnet.demo.temperatures import COMPARE_FULL, COMPARE_QUICK

    budget = {**(COMPARE_QUICK if args.quick else COMPARE_FULL)}
    for key in ("steps", "train_docs", "valid_docs"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    for item in args.budget:
        key, _, value = item.partition("=")
        if key not in budget or not value.isdigit() or int(value) < 1:
            raise UserError(f"--budget {item!r}: expected KEY=N with N >= 1 and KEY one of {sorted(budget)}")
        budget[key] = int(value)
    if budget["test_docs"] < MC_CHOICES:
        raise UserError(f"--budget test_docs={budget['test_docs']}: the harness's multiple-choice items need at least "
                        f"{MC_CHOICES} test documents")
    return budget


def main(argv=None) -> dict:
    """Run the demo; returns {"lm", "tau", "clip", "run"} (what the JSON files hold), or with
    --compare-temperatures what temperatures.json holds."""
    import torch

    args = _parser().parse_args(argv)
    # One thread: the reduction order (and so every printed digit) then does not depend on the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args, argv) -> dict:
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.seeds))
    out = args.output_dir
    if args.compare_temperatures:
        if args.data is not None and not args.data.is_file():
            raise UserError(f"--data: no such file {args.data}")
        budget = _budget(args)
        prepare_output_dir(out)
        from tempnet.demo import lm as L
        from tempnet.demo.temperatures import run_comparison, run_text_comparison

        setup = L.LMSetup(steps=budget["steps"], extra=list(args.override))
        if args.quick:
            print("[temperatures] --quick: a shorter run; the LM is less trained and the frozen TempNets may still sit "
                  "on their plateau (one tau for every position)", flush=True)
        log = lambda m: print(m, flush=True)  # noqa: E731
        if args.data is not None:
            return run_text_comparison(out, budget, seeds, setup, args.data, log=log)
        return run_comparison(out, budget, seeds, setup, log=log)
    budget = {**(QUICK if args.quick else FULL)}
    for key in ("steps", "train_docs", "valid_docs", "clip_epochs"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    if args.data is not None and not args.data.is_file():
        raise FileNotFoundError(f"--data: no such file {args.data}")
    prepare_output_dir(out)
    work = out / "runs"
    t_start = time.time()
    run_info = {"command": "python -m tempnet.demo " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": _machine(), "budget": budget, "seeds": seeds, "timings_s": {}}

    from tempnet.demo import lm as L
    from tempnet.demo import report as R
    from tempnet.demo.clip import CLIP_LOSSES

    _remove_own_runs(work, seeds, L.ROWS, CLIP_LOSSES)
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
                    f"logits); None: not reported, tau's std is at most {L.SPREAD_THRESHOLD:g} (a constant tau, or one "
                    "value plus numerical noise, has no ranking)"}
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
    if args.quick:
        print(f"[demo] --quick stops early: tempnet_dro may still sit on its plateau (one tau for every position, "
              f"std <= {L.SPREAD_THRESHOLD:g}), so its correlations read n/a; the full run reaches the spread", flush=True)
    print(f"[demo] done in {run_info['timings_s']['total']:.0f} s; results in {out} (lm.json, tau_entropy.json, "
          f"{'clip.json, ' if clip else ''}tables.md, run.json, " + ", ".join(f.name for f in figures) + ")")
    return {"lm": lm, "tau": tau, "clip": clip, "run": run_info}
