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
references: `TruthTemperatureLogitsProcessor` below), used both on the teacher-forced test positions and in
`generate` for the sampling measures. The tuning criterion is the validation NLL of the source's tokens
(what a user without the truth can compute); the truncation samplers, whose NLL is infinite, are tuned to
the diversity of plain sampling instead: the grid point whose mean entropy on the validation positions is
closest to that of tau = 1, so their quality is compared at the model's own diversity. Every multi-parameter
rule searches a grid of `GRID_SIZE` settings (equal tuning budgets; best_fixed: its 41 temperatures).

The harness (`tempnet.demo.harness`): every method but the samplers is also scored by lm-evaluation-harness
on the mc / last_token / rolling tasks built from the test documents, beside the Bayes scorer; DIR/harness.json.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tempnet.eval import calibration as C
from tempnet.integrations.decoding import (EDTLogitsProcessor, EntropyDynamicTemperatureLogitsProcessor,
                                           FixedTemperatureLogitsProcessor, HiddenStateTemperatureLogitsProcessor,
                                           MinPLogitsProcessor, PLessLogitsProcessor, TemperatureLogitsProcessor,
                                           TempNetLogitsProcessor, TopNSigmaLogitsProcessor)

__all__ = ["METHODS", "JOINT_METHODS", "SAMPLERS", "HARNESS_METHODS", "TEXT_METHODS", "rules_for", "oracle_excess",
           "FIXED_GRID", "DYNATEMP_GRID", "EDT_GRID", "MIN_P_GRID", "TOP_N_SIGMA_GRID", "P_LESS_GRID", "GRID_SIZE",
           "COMPARE_FULL", "COMPARE_QUICK", "Split", "text_split", "tune_entropy", "harness_processors",
           "TruthTemperatureLogitsProcessor", "make_split", "score_positions", "evaluate_method", "tune",
           "sample_measures", "compare_setting", "run_comparison", "MEASURES", "TRUE_LOGPROB_FLOOR"]

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
#: Budgets: LM steps and documents, hidden-head steps, sampled prompts and tokens per prompt.
COMPARE_FULL = {"steps": 1000, "train_docs": 4000, "valid_docs": 256, "test_docs": 256, "head_steps": 600,
                "prompts": 64, "new_tokens": 48}
COMPARE_QUICK = {"steps": 300, "train_docs": 1500, "valid_docs": 64, "test_docs": 64, "head_steps": 200,
                 "prompts": 32, "new_tokens": 32}


# ---- the truth of a split -------------------------------------------------------------------------------------
class Split:
    """Documents [N, L] and, for every position predicting docs[:, 1:] (row order), the context token, the
    target, the dense truth p* over the model's vocabulary [P, V_model] and the truth's DRO-optimal tau."""

    def __init__(self, lang, docs: np.ndarray, model_vocab: int, rho: float, tau_min: float, tau_max: float):
        self.docs = docs
        self.context = docs[:, :-1].reshape(-1)
        self.target = docs[:, 1:].reshape(-1)
        self.p = truth_rows(lang, self.context, model_vocab)
        self.tau_star = lang.context_tau_star(rho, tau_min, tau_max, context_ids=self.context)


def text_split(docs: np.ndarray) -> SimpleNamespace:
    """Rows of real text [N, L] as a split without truth (docs, context, target): what tuning reads."""
    return SimpleNamespace(docs=docs, context=docs[:, :-1].reshape(-1), target=docs[:, 1:].reshape(-1))


def truth_rows(lang, context: np.ndarray, model_vocab: int) -> np.ndarray:
    """p*(. | context) as rows over the model's vocabulary (source ids; EOS, unk get 0). A context that is not
    a source token (EOS, unk: the start of a document) has the uniform truth of a document's first token."""
    context = np.asarray(context).reshape(-1)
    src = context < lang.vocab_size
    p = np.zeros((context.size, model_vocab))
    p[:, :lang.vocab_size] = 1.0 / lang.vocab_size
    p[src, :lang.vocab_size] = lang.distributions(context[src])
    return p


def make_split(lang, n_docs: int, doc_len: int, seed: int, model_vocab: int, rho, tau_min, tau_max) -> Split:
    """n_docs fresh documents of the language (their own rng seed) with their truth."""
    docs = lang.sample_documents(n_docs, doc_len, np.random.default_rng(seed))
    return Split(lang, docs, model_vocab, rho, tau_min, tau_max)


# ---- the reference rules: temperatures that read the truth ------------------------------------------------
class TruthTemperatureLogitsProcessor(TemperatureLogitsProcessor):
    """A per-row tau computed from the truth of the row's context (its last token): a reference, not a
    decoding rule. kind="oracle": argmin_tau KL(p* || softmax(scores / tau)); kind="dro": the truth's
    DRO-optimal tau (`tau_of_context` [V_source + ...] by context id; non-source contexts: `tau_other`)."""

    def __init__(self, lang, kind: str, model_vocab: int, tau_of_context: np.ndarray | None = None,
                 tau_other: float | None = None, record: bool = False):
        super().__init__(record)
        if kind not in ("oracle", "dro"):
            raise ValueError(f"kind must be 'oracle' or 'dro', got {kind!r}")
        self.lang, self.kind, self.model_vocab = lang, kind, model_vocab
        self.tau_of_context, self.tau_other = tau_of_context, tau_other

    def __call__(self, input_ids, scores):
        self._context = input_ids[:, -1].cpu().numpy()
        return super().__call__(input_ids, scores)

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        ctx = self._context
        if self.kind == "oracle":
            z = scores.double().cpu().numpy()
            tau = C.kl_optimal_tau(truth_rows(self.lang, ctx, self.model_vocab), z)
        else:
            src = ctx < self.lang.vocab_size
            tau = np.full(ctx.shape, float(self.tau_other))
            tau[src] = self.tau_of_context[ctx[src]]
        return torch.as_tensor(tau, dtype=torch.float32, device=scores.device)[:, None]


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


#: Every tuned rule's grid, by method name (in temperatures.json).
GRIDS = {"best_fixed": FIXED_GRID, "dynatemp": DYNATEMP_GRID, "edt": EDT_GRID, "min_p": MIN_P_GRID,
         "top_n_sigma": TOP_N_SIGMA_GRID, "p_less": P_LESS_GRID}


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
