"""The lm-eval tasks on known truth: the Bayes scorer against brute force, the tasks through lm-eval from their
files alone, the truth as a method reaching the ceiling, and which scores no temperature can move."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from tempnet.data.synthetic_lm import SyntheticLanguage  # noqa: E402
from tempnet.demo import harness as H  # noqa: E402


# ---- the Bayes scorer against enumerating every document of a toy source -----------------------------------------
def _joint(lang, length: int) -> dict:
    """P(document) for every document of `length` tokens: the first `order` tokens uniform, then the source."""
    out = {}
    for doc in itertools.product(range(lang.vocab_size), repeat=length):
        p = lang.vocab_size ** -lang.order
        for k in range(lang.order, length):
            p *= lang.next_distribution(doc[k - lang.order:k])[doc[k]]
        out[doc] = p
    return out


def _prefix_prob(joint: dict, prefix) -> float:
    prefix = tuple(int(t) for t in prefix)
    return sum(p for doc, p in joint.items() if doc[:len(prefix)] == prefix)


def test_bayes_scorer_equals_brute_force_enumeration():
    lang = SyntheticLanguage(3, order=2, seed=3, support_sizes=(1, 2, 3))
    length = 7
    joint = _joint(lang, length)
    assert sum(joint.values()) == pytest.approx(1.0)
    docs = lang.sample_documents(6, length, np.random.default_rng(0))
    items = H.make_items(docs, seed=1, min_context=2)
    got = H.bayes_scores(lang, items)

    def cond(context, continuation):  # P(continuation | context) = P(prefix context + continuation) / P(context)
        return _prefix_prob(joint, list(context) + list(continuation)) / _prefix_prob(joint, context)

    scores = np.log([[cond(c, x) for x in ch] for c, ch, _ in items["mc"]])
    chars = np.array([[len(" ".join(f"t{t}" for t in x)) for x in ch] for _, ch, _ in items["mc"]])
    labels = np.array([y for _, _, y in items["mc"]])
    assert got["mc"]["acc"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    assert got["mc"]["acc_norm"] == pytest.approx(np.mean((scores / chars).argmax(1) == labels))
    for (c, ch, _), row in zip(items["mc"], scores):
        assert [H.continuation_logprob(lang, c, x) for x in ch] == pytest.approx(row.tolist(), abs=1e-12)
    nexts = np.array([[cond(c, [v]) for v in range(3)] for c, _ in items["last_token"]])
    target = np.array([t for _, t in items["last_token"]])
    assert got["last_token"]["acc"] == pytest.approx(np.mean(nexts.argmax(1) == target))
    ppl = math.exp(-np.mean(np.log(nexts[np.arange(len(target)), target])))
    assert got["last_token"]["perplexity"] == pytest.approx(ppl, rel=1e-12)
    rolling = -sum(math.log(joint[tuple(int(t) for t in d)]) for d in docs)
    assert got["rolling"]["word_perplexity"] == pytest.approx(math.exp(rolling / docs.size), rel=1e-12)
    assert H.expected_last_token_acc(lang, items)[0] == pytest.approx(nexts.max(1).mean())


# ---- through lm-eval ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 with a tau = 1 head, the V = 64 bigram source, its tokenizer and the three tasks."""
    from transformers import AutoTokenizer, GPT2Config

    from tempnet.integrations.hf import tempnet_model_from_config

    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    lang = SyntheticLanguage(64, 1, 0, support_sizes=(1, 2, 4, 8))
    model = tempnet_model_from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=66,
                                                 bos_token_id=64, eos_token_id=64), objective="ce", tau=1.0).eval()
    lang.save_tokenizer(root / "tokenizer")
    docs = lang.sample_documents(48, 24, np.random.default_rng(5))
    items = H.make_items(docs, seed=2)
    names = H.write_tasks(items, root / "tasks")
    return lang, model, AutoTokenizer.from_pretrained(root / "tokenizer"), items, names, root


_TRUTH_RUN = """
import json, sys
import numpy as np, torch
from transformers import AutoTokenizer, GPT2Config
from tempnet.data.synthetic_lm import SyntheticLanguage
from tempnet.demo import harness as H
from tempnet.integrations.hf import tempnet_model_from_config
lang = SyntheticLanguage(64, 1, 0, support_sizes=(1, 2, 4, 8))
model = tempnet_model_from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=66,
                                             bos_token_id=64, eos_token_id=64), objective="ce", tau=1.0).eval()
names = json.loads(sys.argv[2])
res = H.evaluate(model, AutoTokenizer.from_pretrained(sys.argv[1] + "/tokenizer"),
                 {"truth": H.TruthLogitsProcessor(lang, 66)}, sys.argv[1] + "/tasks", names)
print("RESULT " + json.dumps(res["truth"]))
"""


def test_tasks_load_from_their_files_alone_and_the_truth_reaches_the_ceiling(tiny):
    """In a process with every Hugging Face download switched off, lm-eval reads the three tasks from the
    written files; the method that returns log p* scores exactly what the Bayes scorer computes, and its
    last_token acc lies within sampling error of the ceiling's expectation."""
    lang, _, _, items, names, root = tiny
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", _TRUTH_RUN, str(root), json.dumps(names)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.split("RESULT ", 1)[1])
    want = H.bayes_scores(lang, items)
    for task, metrics in H.METRICS.items():
        for metric in metrics:
            assert got[task][metric] == pytest.approx(want[task][metric], rel=1e-5), (task, metric)
    expected, se = H.expected_last_token_acc(lang, items)
    assert abs(got["last_token"]["acc"] - expected) < 4 * se + 1e-9
    assert want["mc"]["acc"] > 0.5 and want["rolling"]["word_perplexity"] < 64  # a ceiling above chance


def test_a_processor_reaches_lm_eval_and_no_positive_tau_moves_last_token_acc(tiny):
    """lm-eval's loglikelihood with a processor is the log-softmax of the processed logits; any positive
    per-position tau keeps each position's argmax, so last_token acc is the same for every rule while its
    perplexity moves."""
    from tempnet.integrations.decoding import EDTLogitsProcessor, FixedTemperatureLogitsProcessor, TemperatureLogitsProcessor

    class RandomTau(TemperatureLogitsProcessor):  # a positive tau per position, unrelated to the scores
        def temperature(self, scores):
            return torch.exp(torch.randn(scores.shape[0], 1, generator=torch.Generator().manual_seed(0)) * 1.5)

    _, model, tok, items, names, root = tiny
    procs = {"tau_1": FixedTemperatureLogitsProcessor(1.0), "tau_0.3": FixedTemperatureLogitsProcessor(0.3),
             "edt": EDTLogitsProcessor(0.5, 0.8, 2.0), "random": RandomTau(),
             "tau_1e-4": FixedTemperatureLogitsProcessor(1e-4)}  # some target at probability ~exp(-1e4)
    res = H.evaluate(model, tok, procs, root / "tasks", {"last_token": names["last_token"], "mc": names["mc"]})
    accs = {m: r["last_token"]["acc"] for m, r in res.items()}
    assert len(set(accs.values())) == 1, accs
    assert len({round(r["last_token"]["perplexity"], 6) for r in res.values()}) == 5
    assert res["tau_1e-4"]["last_token"]["perplexity"] == math.inf  # reported, not an OverflowError
    # the perplexity of tau = 0.3 by hand: the model's logits over 0.3 at each item's last context position
    nll = []
    for context, target in items["last_token"]:
        with torch.no_grad():
            z = model(input_ids=torch.as_tensor(context)[None]).logits[0, -1].double()
        nll.append(-torch.log_softmax(z / 0.3, -1)[target].item())
    assert res["tau_0.3"]["last_token"]["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


def test_hidden_state_head_scores_through_lm_eval(tiny):
    """The hidden-state head's processor in lm-eval divides each position by the head's tau of that position."""
    from tempnet.integrations.decoding import HiddenStateTemperatureLogitsProcessor
    from tempnet.integrations.hidden_head import HiddenTemperatureHead

    _, model, tok, items, names, root = tiny
    head = HiddenTemperatureHead(16, 8, 0.05, 5.0)
    torch.nn.init.normal_(head.mlp[2].weight, std=1.0)
    res = H.evaluate(model, tok, {"head": HiddenStateTemperatureLogitsProcessor(head, model)}, root / "tasks",
                     {"last_token": names["last_token"]}, batch_size=8)  # several batches: one processor, many forwards
    nll = []
    for context, target in items["last_token"]:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(context)[None], output_hidden_states=True)
            tau = head(out.hidden_states[-1][0, -1])
        nll.append(-torch.log_softmax(out.logits[0, -1].double() / tau.double(), -1)[target].item())
    assert res["head"]["last_token"]["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


# ---- the sampling baselines ---------------------------------------------------------------------------------------
def test_truncation_processors_keep_what_their_rules_say():
    from tempnet.integrations.decoding import MinPLogitsProcessor, PLessLogitsProcessor, TopNSigmaLogitsProcessor

    z = torch.tensor([[3.0, 2.0, 0.5, -1.0, -4.0]])
    for tau in (1.0, 2.0):
        p = torch.softmax(z / tau, -1)[0]
        kept = lambda proc: torch.isfinite(proc(None, z))[0].tolist()  # noqa: E731
        assert kept(MinPLogitsProcessor(tau, 0.2)) == (p >= 0.2 * p.max()).tolist()
        assert kept(PLessLogitsProcessor(tau)) == (p >= (p * p).sum()).tolist()
        sd = z[0].std(unbiased=False)
        assert kept(TopNSigmaLogitsProcessor(tau, 1.0)) == (z[0] >= z[0].max() - sd).tolist()
        out = MinPLogitsProcessor(tau, 0.2)(None, z)[0]
        assert torch.allclose(out[torch.isfinite(out)], (z[0] / tau)[p >= 0.2 * p.max()])  # then the temperature
    assert torch.isfinite(PLessLogitsProcessor(1.0)(None, torch.tensor([[50.0, 0.0, 0.0]]))).tolist() == [[True, False, False]]
