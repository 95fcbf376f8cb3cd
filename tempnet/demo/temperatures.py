"""Which temperature gets closest to the truth? `python -m tempnet.demo --compare-temperatures`.

On the demo's synthetic language the true next-token distribution p* is known at every position, so a
temperature rule can be judged exactly: KL(p* || softmax(z / tau)) per position (`tempnet.eval.calibration`).
Two settings, each a trained model whose logits z are fixed, and every rule applied to them:

    frozen_ce          a GPT-2 trained with plain CE (the frozen LLM of the paper's LLaMA-2 rows)
    joint_tempnet_dro  a GPT-2 trained jointly with its TempNet under the robust loss (the paper's method)

Methods (`METHODS`), each tuned on the validation split and measured on a separate test split:
tau_1; best_fixed (a grid, `FIXED_GRID`); dynatemp and edt (llama.cpp's dynamic temperature and EDT, grids
`DYNATEMP_GRID`, `EDT_GRID`); tempnet_dro / tempnet_ce (a fresh TempNet trained by the LLM trainer with the
model frozen, model.mode=frozen as in LLaMA-2/configs/frozen_*.yaml; in joint_tempnet_dro: the model's own
TempNet); hidden_head (AutoDeco's MLP on the last hidden state, `tempnet.integrations.hidden_head`); and two
references that read the truth: oracle_per_position (the KL-optimal tau at each position, the best any
per-token temperature can do on these logits) and dro_optimal_truth (the truth's DRO-optimal tau, the
target of the robust loss). The sampling baselines users have today, min_p, top_n_sigma and p_less (a fixed
temperature, then truncation), join them in the sampling measures; a truncated distribution gives tokens of
the source zero probability, so their KL and perplexity are infinite (null in the JSON). Every rule is a logits processor of `tempnet.integrations.decoding` (the
references: `TruthTemperatureLogitsProcessor`), used both on the teacher-forced test positions and in
`generate` for the sampling measures. The tuning criterion is the validation NLL of the source's tokens
(what a user without the truth can compute); the truncation samplers, whose NLL is infinite, are tuned to
the diversity of plain sampling instead: the grid point whose mean entropy on the validation positions is
closest to that of tau = 1, so their quality is compared at the model's own diversity. Every multi-parameter
rule searches a grid of `GRID_SIZE` settings (equal tuning budgets; best_fixed: its 41 temperatures).

Modules: tempnet.demo.temperatures_truth (a split's truth, the references), tempnet.demo.temperatures_measure
(the methods, their grids, tuning and measuring them on one model), this one (training and the whole comparison).

The harness (`tempnet.demo.harness`): every method but the samplers is also scored by lm-evaluation-harness
on the mc / last_token / rolling tasks built from the test documents, beside the Bayes scorer; DIR/harness.json.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from tempnet.demo.temperatures_measure import (DYNATEMP_GRID, EDT_GRID, FIXED_GRID, GRID_SIZE, GRIDS, HARNESS_METHODS,
                                               JOINT_METHODS, MEASURES, METHODS, MIN_P_GRID, P_LESS_GRID, SAMPLERS,
                                               TEXT_METHODS, TOP_N_SIGMA_GRID, TRUE_LOGPROB_FLOOR, compare_setting,
                                               evaluate_method, harness_processors, oracle_excess, plain_entropy,
                                               rules_for, sample_measures, score_positions, tune, tune_entropy,
                                               tune_rule)
from tempnet.demo.temperatures_truth import Split, TruthTemperatureLogitsProcessor, make_split, text_split
from tempnet.eval import calibration as C

__all__ = ["METHODS", "JOINT_METHODS", "SAMPLERS", "HARNESS_METHODS", "TEXT_METHODS", "rules_for", "oracle_excess",
           "FIXED_GRID", "DYNATEMP_GRID", "EDT_GRID", "MIN_P_GRID", "TOP_N_SIGMA_GRID", "P_LESS_GRID", "GRID_SIZE",
           "COMPARE_FULL", "COMPARE_QUICK", "Split", "text_split", "tune_entropy", "harness_processors",
           "TruthTemperatureLogitsProcessor", "make_split", "score_positions", "evaluate_method", "tune",
           "sample_measures", "compare_setting", "run_comparison", "MEASURES", "TRUE_LOGPROB_FLOOR"]

#: Budgets: LM steps and documents, hidden-head steps, sampled prompts and tokens per prompt.
COMPARE_FULL = {"steps": 1000, "train_docs": 4000, "valid_docs": 256, "test_docs": 256, "head_steps": 600,
                "prompts": 64, "new_tokens": 48}
COMPARE_QUICK = {"steps": 300, "train_docs": 1500, "valid_docs": 64, "test_docs": 64, "head_steps": 200,
                 "prompts": 32, "new_tokens": 32}


# ---- the whole comparison --------------------------------------------------------------------------------------
def _train_frozen(objective: str, setup, corpus, seed: int, base: Path, out: Path, cache: Path) -> Path:
    """A fresh TempNet trained alone on the frozen model at `base`/final by the LLM trainer (model.mode=frozen,
    the LLaMA-2 frozen setting), under `objective` (tempnet_dro or tempnet_ce)."""
    from tempnet.config import load_config
    from tempnet.demo.lm import lm_overrides
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_trainer import train

    overrides = lm_overrides(setup, corpus, seed, cache) + [
        "model.mode=frozen", f"model.path={base / 'final'}", "model.fresh_tempnet=true", f"objective={objective}"]
    train(load_config(LMTrainConfig, None, overrides), out, overwrite=True)
    return out


def _plain(run_dir: Path):
    """The trained model with a tau = 1 head (its raw logits), and its own stored head module."""
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    own = tempnet_model_from_pretrained(str(run_dir / "final")).tempnet
    plain = tempnet_model_from_pretrained(str(run_dir / "final"), fresh_tempnet=True, objective="ce", tau=1.0)
    return plain.eval(), own.eval()


def run_seed(seed: int, budget: dict, setup, corpus, work: Path, log=print) -> dict:
    """Both settings for one training seed: {"frozen_ce": {...}, "joint_tempnet_dro": {...}, "timings_s"}."""
    from transformers import AutoTokenizer

    from tempnet.demo import harness as H
    from tempnet.demo.lm import train_objective
    from tempnet.integrations.hidden_head import train_hidden_head

    lang, cache, timings = corpus.language, work / "token_cache", {}
    doc_len = corpus.valid.shape[1]
    vocab = corpus.vocab_size
    args = (corpus.rho, setup.tau_min, setup.tau_max)
    # validation: the demo corpus's validation documents; test: fresh documents of the language
    valid = Split(lang, corpus.valid, vocab, *args)
    test = make_split(lang, budget["test_docs"], doc_len, 10_000 + seed, vocab, *args)
    prompts = test.docs[:budget["prompts"], :1]
    t0 = time.time()
    runs = {}
    for row in ("ce", "tempnet_dro"):
        log(f"[temperatures] train {row} (seed {seed})")
        runs[row] = train_objective(row, setup, corpus, seed, work / f"{row}_seed{seed}", cache)
    for obj in ("tempnet_dro", "tempnet_ce"):
        log(f"[temperatures] train {obj} alone on the frozen ce model (seed {seed})")
        runs["frozen_" + obj] = _train_frozen(obj, setup, corpus, seed, runs["ce"], work / f"frozen_{obj}_seed{seed}", cache)
    timings["train_lm"] = time.time() - t0
    plain_ce, _ = _plain(runs["ce"])
    heads = {obj: _plain(runs["frozen_" + obj])[1] for obj in ("tempnet_dro", "tempnet_ce")}
    t0 = time.time()
    log(f"[temperatures] train the hidden-state head on the frozen ce model (seed {seed})")
    train_docs = np.load(Path(corpus.train_file).with_name("train_tokens.npy"))[:1000]
    heads["hidden_head"], head_losses = train_hidden_head(plain_ce, train_docs, budget["head_steps"], setup.tau_min,
                                                          setup.tau_max, seed=seed)
    timings["train_hidden_head"] = time.time() - t0
    t0 = time.time()
    log(f"[temperatures] measure frozen_ce (seed {seed})")
    frozen_rules = rules_for(lang, vocab, corpus, setup, heads, plain_ce)
    frozen = compare_setting(plain_ce, frozen_rules, lang, valid, test, prompts, budget["new_tokens"], seed,
                             heads["hidden_head"])
    plain_joint, own = _plain(runs["tempnet_dro"])
    log(f"[temperatures] measure joint_tempnet_dro (seed {seed})")
    joint_rules = rules_for(lang, vocab, corpus, setup, {"tempnet_dro": own}, plain_joint)
    joint = compare_setting(plain_joint, joint_rules, lang, valid, test, prompts, budget["new_tokens"], seed)
    timings["measure"] = time.time() - t0
    t0 = time.time()
    log(f"[temperatures] lm-eval on the mc / last_token / rolling tasks of the test documents (seed {seed})")
    items = H.make_items(test.docs, seed)
    task_dir = work / f"harness_tasks_seed{seed}"
    names = H.write_tasks(items, task_dir)
    tokenizer = AutoTokenizer.from_pretrained(corpus.tokenizer_dir)
    harness = {"frozen_ce": H.evaluate(plain_ce, tokenizer, harness_processors(frozen_rules, frozen, [
                   m for m in HARNESS_METHODS if m in frozen]), task_dir, names),
               "joint_tempnet_dro": H.evaluate(plain_joint, tokenizer, harness_processors(joint_rules, joint, [
                   m for m in HARNESS_METHODS if m in joint]), task_dir, names)}
    bayes = H.bayes_scores(lang, items)
    for setting in harness.values():
        setting["bayes"] = bayes
    timings["harness"] = time.time() - t0
    checks = {"oracle_excess_max": max(oracle_excess(frozen), oracle_excess(joint)),
              "best_fixed_minus_tau_1_valid_nll": max(r["best_fixed"]["valid_nll"] - r["tau_1"]["valid_nll"]
                                                      for r in (frozen, joint))}
    p = test.p
    source_entropy = float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(-1).mean())  # H(p*) per test token
    return {"frozen_ce": frozen, "joint_tempnet_dro": joint, "harness": harness, "timings_s": timings, "checks": checks,
            "source_entropy": source_entropy,
            "hidden_head_loss": [head_losses[0], head_losses[-1]]}


def run_comparison(out: Path, budget: dict, seeds: list[int], setup, log=print) -> dict:
    """Train, measure and write DIR/temperatures.json, DIR/temperatures.md and DIR/temperatures.png; the runs
    go to DIR/runs/temperatures/ (the only folder this removes)."""
    from tempnet.demo import lm as L
    from tempnet.demo.temperatures_report import aggregate_seeds

    work = out / "runs" / "temperatures"
    shutil.rmtree(work, ignore_errors=True)
    t_start = time.time()
    corpus = L.synthetic_corpus(work / "lm_data", setup, budget["train_docs"], budget["valid_docs"])
    per_seed = [run_seed(seed, budget, setup, corpus, work, log) for seed in seeds]
    result = aggregate_seeds(per_seed)
    result["settings"] = {"budget": budget, "seeds": seeds, "rho": corpus.rho, "tau_range": [setup.tau_min, setup.tau_max],
                          "grids": GRIDS, "grid_sizes": {k: len(v) for k, v in GRIDS.items()},
                          "tuning": "dynatemp, edt, best_fixed: the grid point with the lowest validation NLL of the "
                                    "source's tokens; min_p, top_n_sigma, p_less (infinite NLL): the grid point whose "
                                    "mean validation entropy is closest to that of tau = 1",
                          "true_logprob_floor": TRUE_LOGPROB_FLOOR, "optimal_tau_range": C.OPTIMAL_TAU_RANGE,
                          "timings_s": [s["timings_s"] for s in per_seed], "total_s": time.time() - t_start}
    return _write_outputs(out, result, [s["harness"] for s in per_seed], len(seeds), "the synthetic language's tasks",
                          t_start, log)


def run_text_comparison(out: Path, budget: dict, seeds: list[int], setup, data: Path, log=print) -> dict:
    """--data: the same frozen CE model and TempNets trained on a local text; the rules that need no truth tuned
    on the first half of its validation lines, lm-eval's last_token and rolling tasks written from the second
    half; DIR/harness.json / .md / .png for frozen_ce."""
    from transformers import AutoTokenizer

    from tempnet.demo import harness as H
    from tempnet.demo import lm as L
    from tempnet.errors import UserError
    from tempnet.integrations.hidden_head import train_hidden_head

    work = out / "runs" / "temperatures"
    shutil.rmtree(work, ignore_errors=True)
    t_start = time.time()
    corpus = L.text_corpus(data, work / "lm_data", setup)
    tokenizer = AutoTokenizer.from_pretrained(corpus.tokenizer_dir)
    half = len(corpus.valid_lines) // 2
    tune_rows = L.pack_lines(tokenizer, corpus.valid_lines[:half], setup.seq_len)
    if half == 0 or len(tune_rows) == 0:
        raise UserError(f"--data {data}: the first half of the validation part ({half} lines) must hold at least "
                        f"one sequence of {setup.seq_len} tokens to tune the rules on; give a longer file")
    valid = text_split(tune_rows)
    names = H.text_tasks(corpus.valid_lines[half:], work / "harness_tasks")
    train_lines = Path(corpus.train_file).read_text().splitlines()
    head_rows = L.pack_lines(tokenizer, train_lines, setup.seq_len)[:1000]
    cache, per_seed = work / "token_cache", []
    for seed in seeds:
        log(f"[temperatures] --data {data.name}: train ce and the frozen TempNets (seed {seed})")
        base = L.train_objective("ce", setup, corpus, seed, work / f"ce_seed{seed}", cache)
        heads = {obj: _plain(_train_frozen(obj, setup, corpus, seed, base, work / f"frozen_{obj}_seed{seed}", cache))[1]
                 for obj in ("tempnet_dro", "tempnet_ce")}
        plain, _ = _plain(base)
        heads["hidden_head"], _ = train_hidden_head(plain, head_rows, budget["head_steps"], setup.tau_min,
                                                    setup.tau_max, seed=seed)
        rules = rules_for(None, corpus.vocab_size, corpus, setup, heads, plain)
        z_valid, _ = score_positions(plain, valid.docs)
        h_tau1, procs = plain_entropy(z_valid), {}
        for name in TEXT_METHODS:
            make, _, _ = tune_rule(rules[name], z_valid, valid, h_tau1)
            procs[name] = make()
        log(f"[temperatures] lm-eval on last_token and rolling of {data.name} (seed {seed})")
        per_seed.append({"frozen_ce": H.evaluate(plain, tokenizer, procs, work / "harness_tasks", names)})
    return _write_outputs(out, None, per_seed, len(seeds), f"{data.name}'s last_token and rolling tasks", t_start, log)


def _write_outputs(out: Path, result: dict | None, harness_per_seed: list[dict], n_seeds: int, what: str,
                   t_start: float, log) -> dict:
    """temperatures.json / .md / .png (when `result`, the comparison on known truth) and harness.json / .md / .png."""
    from tempnet.demo import report as R
    from tempnet.demo.harness_report import aggregate_harness, plot_harness, render_harness
    from tempnet.demo.temperatures_report import plot, render

    written, markdown = [], ""
    if result is not None:
        R.write_json(out / "temperatures.json", result)
        markdown = render(result)
        (out / "temperatures.md").write_text(markdown)
        written += [out / "temperatures.json", out / "temperatures.md", plot(result, out / "temperatures.png")]
    harness = aggregate_harness(harness_per_seed)
    R.write_json(out / "harness.json", harness)
    harness_md = render_harness(harness, n_seeds, what)
    (out / "harness.md").write_text(harness_md)
    written += [out / "harness.json", out / "harness.md", plot_harness(harness, out / "harness.png")]
    log("\n" + markdown + "\n" + harness_md)
    log(f"[temperatures] done in {time.time() - t_start:.0f} s; " + ", ".join(str(p) for p in written))
    return {**(result or {}), "harness": harness}
