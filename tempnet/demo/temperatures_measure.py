"""Every temperature rule on one trained model (tempnet.demo.temperatures): the methods and their grids, the
rules as logits processors, tuned on validation, measured teacher-forced on test and in sampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tempnet.demo.temperatures_truth import Split, TruthTemperatureLogitsProcessor, truth_rows
from tempnet.eval import calibration as C
from tempnet.integrations.decoding import (EDTLogitsProcessor, EntropyDynamicTemperatureLogitsProcessor,
                                           FixedTemperatureLogitsProcessor, HiddenStateTemperatureLogitsProcessor,
                                           MinPLogitsProcessor, PLessLogitsProcessor, TempNetLogitsProcessor,
                                           TopNSigmaLogitsProcessor)

__all__ = ["METHODS", "JOINT_METHODS", "SAMPLERS", "HARNESS_METHODS", "TEXT_METHODS", "MEASURES", "FIXED_GRID",
           "DYNATEMP_GRID", "EDT_GRID", "MIN_P_GRID", "TOP_N_SIGMA_GRID", "P_LESS_GRID", "GRID_SIZE", "GRIDS",
           "TRUE_LOGPROB_FLOOR", "score_positions", "apply_processor", "evaluate_method", "tune", "tune_entropy",
           "sample_measures", "plain_entropy", "tune_rule", "harness_processors", "compare_setting", "oracle_excess",
           "rules_for"]

#: The sampling baselines: a fixed temperature, then truncation (for sampling only).
SAMPLERS = ("min_p", "top_n_sigma", "p_less")
METHODS = ("tau_1", "best_fixed", "dynatemp", "edt", "tempnet_dro", "tempnet_ce", "hidden_head",
           "oracle_per_position", "dro_optimal_truth") + SAMPLERS
JOINT_METHODS = ("tau_1", "best_fixed", "dynatemp", "edt", "tempnet_dro", "oracle_per_position",
                 "dro_optimal_truth") + SAMPLERS
#: The methods scored by lm-eval (every one that gives each source token a probability).
HARNESS_METHODS = tuple(m for m in METHODS if m not in SAMPLERS)
#: --data (truth unknown): the methods that need no truth.
TEXT_METHODS = ("tau_1", "best_fixed", "dynatemp", "edt", "tempnet_dro", "tempnet_ce", "hidden_head")
MEASURES = ("kl_to_truth", "test_ppl", "ece", "sample_true_logprob", "sample_entropy", "gap_closed",
            "tau_mean", "tau_std", "valid_nll")
#: Fixed temperatures tried: 41 log-spaced values in [0.1, 10] (1.0 among them; the jointly trained model's logits
#: live on the scale of its own tau, up to tau_max = 5, so the grid reaches past it).
FIXED_GRID = tuple(float(t) for t in np.round(np.geomspace(0.1, 10.0, 41), 6))
#: The base temperatures of the entropy rules and the samplers (the same reach).
BASE_TEMPERATURES = (0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0)
#: Settings searched by every multi-parameter rule: 8 base temperatures x 9 values of the rule's own knobs.
GRID_SIZE = 72
#: llama.cpp dynatemp as (--temp T, --dynatemp-range R, exponent): t_min = max(0, T - R), t_max = T + R.
DYNATEMP_GRID = tuple((t, r, e) for t in BASE_TEMPERATURES for r in (0.25, 0.5, 1.0) for e in (0.5, 1.0, 2.0))
#: EDT as (t0, n, theta): T = t0 * n^(theta / H); only theta * log n matters, so n stays at the paper's 0.8.
EDT_GRID = tuple((t0, 0.8, th) for t0 in BASE_TEMPERATURES
                 for th in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0))
#: min-p as (T, min_p).
MIN_P_GRID = tuple((t, m) for t in BASE_TEMPERATURES for m in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7))
#: top-n-sigma as (T, n).
TOP_N_SIGMA_GRID = tuple((t, n) for t in BASE_TEMPERATURES for n in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0))
#: p-less has no knob but its temperature: 72 temperatures over the base temperatures' range.
P_LESS_GRID = tuple((float(t),) for t in np.round(np.geomspace(0.6, 4.0, GRID_SIZE), 6))
assert all(len(g) == GRID_SIZE for g in (DYNATEMP_GRID, EDT_GRID, MIN_P_GRID, TOP_N_SIGMA_GRID, P_LESS_GRID))
#: Sampling quality counts a token the source never emits as log p* = log of this.
TRUE_LOGPROB_FLOOR = 1e-6
#: Every tuned rule's grid, by method name (in temperatures.json).
GRIDS = {"best_fixed": FIXED_GRID, "dynatemp": DYNATEMP_GRID, "edt": EDT_GRID, "min_p": MIN_P_GRID,
         "top_n_sigma": TOP_N_SIGMA_GRID, "p_less": P_LESS_GRID}



# ---- teacher-forced scoring -----------------------------------------------------------------------------------
@torch.no_grad()
def score_positions(model, docs: np.ndarray, hidden_head=None, batch: int = 64):
    """The plain model's logits at every position predicting docs[:, 1:]: z [P, V] float32 tensor, and (with a
    hidden head) that head's tau [P] through its logits processor's hook."""
    zs, taus = [], []
    proc = HiddenStateTemperatureLogitsProcessor(hidden_head, model) if hidden_head is not None else None
    if proc is not None:
        proc.__enter__()
    try:
        for s in range(0, len(docs), batch):
            out = model(input_ids=torch.as_tensor(docs[s:s + batch]))
            zs.append((out.logits * out.tau)[:, :-1].reshape(-1, out.logits.shape[-1]))  # the plain head: tau = 1
            if proc is not None:
                taus.append(proc.temperature_of_positions()[:, :-1].reshape(-1))
    finally:
        if proc is not None:
            proc.__exit__(None, None, None)
    return torch.cat(zs), (torch.cat(taus) if taus else None)


def apply_processor(proc, z: torch.Tensor, context: np.ndarray, batch: int = 4096):
    """log q [P, V] float64 and tau [P] of a temperature processor on fixed logits, row by row as in generate
    (input_ids = each row's context token)."""
    proc.record, proc.history = True, []
    logq = []
    for s in range(0, len(z), batch):
        ids = torch.as_tensor(context[s:s + batch])[:, None]
        logq.append(C.log_softmax(proc(ids, z[s:s + batch]).double().numpy()))
    return np.concatenate(logq), torch.cat(proc.history).double().numpy()


def evaluate_method(logq: np.ndarray, tau: np.ndarray, split: Split) -> dict:
    """The exact teacher-forced measures on a split: mean KL to the truth, perplexity on the split's tokens,
    exact top-1 ECE, and the spread of tau; "kl" keeps the per-position KL [P]."""
    kl = C.kl_to_truth(split.p, logq)
    nll = -logq[np.arange(len(split.target)), split.target]
    return {"kl_to_truth": float(kl.mean()), "test_ppl": float(np.exp(nll.mean())), "nll": float(nll.mean()),
            "ece": C.top1_calibration_error(split.p, logq), "tau_mean": float(tau.mean()), "tau_std": float(tau.std()),
            "kl": kl}


def tune(make, grid, z_valid: torch.Tensor, valid: Split) -> tuple[tuple, float, list]:
    """The grid point whose processor gives the lowest validation NLL; returns (point, its NLL, every NLL)."""
    nlls = []
    for point in grid:
        logq, _ = apply_processor(make(point), z_valid, valid.context)
        nlls.append(float(-logq[np.arange(len(valid.target)), valid.target].mean()))
    best = int(np.argmin(nlls))
    return grid[best], nlls[best], nlls


def tune_entropy(make, grid, z_valid: torch.Tensor, valid, target: float) -> tuple[tuple, float, list]:
    """The grid point whose processor's mean entropy on the validation positions is closest to `target` (the
    diversity of plain sampling); returns (point, its entropy, every entropy)."""
    entropies = [float(C.entropy_of_log_probs(apply_processor(make(point), z_valid, valid.context)[0]).mean())
                 for point in grid]
    best = int(np.argmin([abs(h - target) for h in entropies]))
    return grid[best], entropies[best], entropies


# ---- sampling -------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_measures(model, proc, lang, prompts: np.ndarray, new_tokens: int, seed: int) -> dict:
    """Sample continuations with `generate(logits_processor=[proc], do_sample=True, top_k=0)` and, at every
    step, take the sampling distribution q (the processed scores) and the truth of its context:
    sample_true_logprob = mean E_q[log max(p*, floor)], sample_entropy = mean H(q) (nats per token);
    sample_true_logprob_mc = the mean realised log max(p*(x), floor) of the sampled tokens, with its standard
    error (a Monte Carlo check of the first)."""
    torch.manual_seed(seed)
    ids = torch.as_tensor(prompts)
    out = model.generate(ids, logits_processor=[proc], do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                         max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=None, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    seq = out.sequences.numpy()
    start = ids.shape[1]
    exp_lp, ent, realised = [], [], []
    vocab = out.scores[0].shape[-1]
    for t, scores in enumerate(out.scores):
        logq = C.log_softmax(scores.double().numpy())
        p = truth_rows(lang, seq[:, start + t - 1], vocab)
        exp_lp.append(C.expected_true_logprob(p, logq, TRUE_LOGPROB_FLOOR))
        ent.append(C.entropy_of_log_probs(logq))
        tok = seq[:, start + t]
        realised.append(np.log(np.maximum(p[np.arange(len(tok)), tok], TRUE_LOGPROB_FLOOR)))
    realised = np.concatenate(realised)
    return {"sample_true_logprob": float(np.concatenate(exp_lp).mean()), "sample_entropy": float(np.concatenate(ent).mean()),
            "sample_true_logprob_mc": float(realised.mean()),
            "sample_true_logprob_mc_se": float(realised.std(ddof=1) / math.sqrt(realised.size)),
            "sampled_tokens": int(realised.size)}


# ---- one setting ---------------------------------------------------------------------------------------------
def plain_entropy(z: torch.Tensor) -> float:
    """Mean entropy of softmax(z) over positions: the diversity of plain sampling (tau = 1)."""
    return float(C.entropy_of_log_probs(C.log_softmax(z.double().numpy())).mean())


def tune_rule(rule, z_valid: torch.Tensor, valid, h_tau1: float):
    """A rule of `rules_for` -> (processor factory, chosen point or None, tuning record or None): ("grid", f, g)
    by the validation NLL, ("entropy", f, g) by the distance to plain sampling's entropy h_tau1."""
    if not isinstance(rule, tuple):
        return rule, None, None
    how, factory, grid = rule
    if how == "grid":
        params, _, crit = tune(factory, grid, z_valid, valid)
        record = {"valid_nll": crit}
    else:
        params, _, crit = tune_entropy(factory, grid, z_valid, valid, h_tau1)
        record = {"valid_entropy": crit, "target_entropy": h_tau1}
    record["grid"] = [list(g) if isinstance(g, tuple) else g for g in grid]
    return (lambda f=factory, p=params: f(p)), params, record


def harness_processors(rules: dict, results: dict, methods) -> dict:
    """{method: a fresh processor with the parameters chosen on validation} for the harness."""
    out = {}
    for name in methods:
        rule, params = rules[name], results[name].get("params")
        out[name] = rule() if params is None else rule[1](tuple(params) if isinstance(params, list) else params)
    return out


def compare_setting(model, rules: dict, lang, valid: Split, test: Split, prompts: np.ndarray, new_tokens: int,
                    seed: int, hidden_head=None) -> dict:
    """Every method of `rules` ({name: processor factory, or (criterion, factory, grid)}) on one model: tuned on
    valid, measured on test (exact) and in sampling. Returns {method: record} with "gap_closed" filled and the
    per-position KL under "kl" (dropped before writing)."""
    z_valid, tau_hidden_valid = score_positions(model, valid.docs, hidden_head)
    z_test, tau_hidden = score_positions(model, test.docs, hidden_head)
    h_tau1 = plain_entropy(z_valid)
    results = {}
    for name, rule in rules.items():
        make, params, grid_record = tune_rule(rule, z_valid, valid, h_tau1)
        if name == "hidden_head":  # its tau comes from the hidden state, captured by its processor's hook
            proc = make()
            logq = C.tempered_log_probs(z_test.double().numpy(), tau_hidden.double().numpy())
            tau = tau_hidden.double().numpy()
            logq_valid = C.tempered_log_probs(z_valid.double().numpy(), tau_hidden_valid.double().numpy())
            with proc:
                sample = sample_measures(model, proc, lang, prompts, new_tokens, seed)
        else:
            logq, tau = apply_processor(make(), z_test, test.context)
            logq_valid, _ = apply_processor(make(), z_valid, valid.context)
            sample = sample_measures(model, make(), lang, prompts, new_tokens, seed)
        rec = evaluate_method(logq, tau, test)
        rec["valid_nll"] = float(-logq_valid[np.arange(len(valid.target)), valid.target].mean())
        if params is not None:
            rec["params"] = list(params) if isinstance(params, tuple) else params
            rec["tuning"], rec["grid_size"] = grid_record, len(grid_record["grid"])
        results[name] = {**rec, **sample}
    kl1, klo = results["tau_1"]["kl_to_truth"], results["oracle_per_position"]["kl_to_truth"]
    for rec in results.values():
        rec["gap_closed"] = C.gap_closed(rec["kl_to_truth"], kl1, klo)
    return results


def oracle_excess(results: dict) -> float:
    """max over the temperature methods and test positions of KL(oracle) - KL(method): <= 0 up to rounding, since
    the per-position optimum is the minimum over every temperature (a check written with the results). The
    samplers are no temperature: where truncation keeps all of p*'s support it can come closer than any tau."""
    oracle = results["oracle_per_position"]["kl"]
    return float(max((oracle - rec["kl"]).max() for name, rec in results.items() if name not in SAMPLERS))


def rules_for(lang, vocab, corpus, setup, heads: dict, model) -> dict:
    """{method: processor factory, or (criterion, factory, grid)} for one setting; `heads`: {name: TempNet module
    or hidden head} for the learned rows present in it; lang=None (real text): no references that read the
    truth."""
    rules = {
        "tau_1": lambda: FixedTemperatureLogitsProcessor(1.0),
        "best_fixed": ("grid", lambda t: FixedTemperatureLogitsProcessor(t), FIXED_GRID),
        "dynatemp": ("grid", lambda g: EntropyDynamicTemperatureLogitsProcessor.from_range(*g), DYNATEMP_GRID),
        "edt": ("grid", lambda g: EDTLogitsProcessor(*g), EDT_GRID),
    }
    for name in ("tempnet_dro", "tempnet_ce"):
        if name in heads:
            rules[name] = lambda h=heads[name]: TempNetLogitsProcessor(h)
    if "hidden_head" in heads:
        rules["hidden_head"] = lambda h=heads["hidden_head"]: HiddenStateTemperatureLogitsProcessor(h, model)
    if lang is None:
        return rules
    tau_ctx = lang.context_tau_star(corpus.rho, setup.tau_min, setup.tau_max)
    rules["oracle_per_position"] = lambda: TruthTemperatureLogitsProcessor(lang, "oracle", vocab)
    rules["dro_optimal_truth"] = lambda: TruthTemperatureLogitsProcessor(lang, "dro", vocab, tau_ctx, setup.tau_min)
    rules["min_p"] = ("entropy", lambda g: MinPLogitsProcessor(*g), MIN_P_GRID)
    rules["top_n_sigma"] = ("entropy", lambda g: TopNSigmaLogitsProcessor(*g), TOP_N_SIGMA_GRID)
    rules["p_less"] = ("entropy", lambda g: PLessLogitsProcessor(*g), P_LESS_GRID)
    return rules
