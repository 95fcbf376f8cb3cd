"""The paper's own measurement on known truth: lm-eval tasks built from the synthetic language, scored by
lm-evaluation-harness through the registered `tempnet` model, beside the scorer that knows p*.

Three local tasks (task YAML + data files, no download), written from held-out documents by `write_tasks`:

    mc          multiple choice in the style of HellaSwag / PIQA (metrics acc, acc_norm): a document's prefix,
                its true continuation of `MC_TOKENS` tokens (sampled from the source) and `MC_CHOICES - 1`
                distractors, each the tokens at the same offset of another held-out document: a fluent
                continuation of another context
    last_token  LAMBADA-style (perplexity, acc): a document's prefix and its next token
    rolling     wikitext-style rolling log-likelihood of whole documents (word_perplexity: one word per token)

The perplexities aggregate with `perplexity_or_inf` / `weighted_perplexity_or_inf` (registered by
`tempnet.integrations.lm_eval`): lm-eval's own, but inf where a rule drives a target's probability to ~0.
`bayes_scores` is the ceiling: the same metrics with the true log-probabilities log p* (what no model can
beat in expectation). Every method is a logits processor scored by lm-eval's own loglikelihood path
(`TempNetLM(logits_processor=...)`); `TruthLogitsProcessor` returns log p* itself, so the harness run of the
truth reproduces the ceiling. With real text (`text_tasks`) only last_token and rolling exist, and no ceiling.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from tempnet.data.synthetic_lm import token_words

__all__ = ["TASKS", "METRICS", "MC_CHOICES", "MC_TOKENS", "make_items", "write_tasks", "text_tasks", "bayes_scores",
           "expected_last_token_acc", "continuation_logprob", "TruthLogitsProcessor", "evaluate"]

TASKS = ("mc", "last_token", "rolling")
#: The metrics reported per task (lm-eval's names).
METRICS = {"mc": ("acc", "acc_norm"), "last_token": ("acc", "perplexity"), "rolling": ("word_perplexity",)}
MC_CHOICES, MC_TOKENS = 4, 4
#: The shortest prefix of an mc or last_token item (tokens): enough context for every position to be in-domain.
MIN_CONTEXT = 8


def make_items(docs: np.ndarray, seed: int, min_context: int = MIN_CONTEXT) -> dict:
    """The items of the three tasks from held-out documents [N, L] (N >= MC_CHOICES) as token ids:
    {"mc": [(context, [choices], label)], "last_token": [(context, target)], "rolling": [doc]}; every prefix
    has at least `min_context` tokens."""
    rng = np.random.default_rng(seed)
    n, length = docs.shape
    if n < MC_CHOICES or length < min_context + MC_TOKENS:
        raise ValueError(f"need at least {MC_CHOICES} documents of {min_context + MC_TOKENS} tokens for the tasks, "
                         f"got {n} of {length}")
    mc, last = [], []
    for i in range(n):
        c = int(rng.integers(min_context, length - MC_TOKENS + 1))
        others = rng.choice(np.delete(np.arange(n), i), size=MC_CHOICES - 1, replace=False)
        choices = [docs[j, c:c + MC_TOKENS] for j in others]
        label = int(rng.integers(MC_CHOICES))
        choices.insert(label, docs[i, c:c + MC_TOKENS])
        mc.append((docs[i, :c], choices, label))
        c = int(rng.integers(min_context, length))
        last.append((docs[i, :c], int(docs[i, c])))
    return {"mc": mc, "last_token": last, "rolling": list(docs)}


def _yaml(name: str, data: Path, body: str) -> str:
    loader = "text" if data.suffix == ".txt" else "json"
    return (f"task: {name}\ndataset_path: {loader}\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
            f"test_split: test\n{body}")


_BODIES = {
    "mc": 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
          'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
    "last_token": 'output_type: loglikelihood\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{\' \' + target}}"\n'
                  'metric_list:\n  - metric: perplexity\n    aggregation: perplexity_or_inf\n    higher_is_better: false\n'
                  '  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n',
    "rolling": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
               'metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity_or_inf\n'
               '    higher_is_better: false\n',
}


def _write(directory: Path, prefix: str, rows: dict) -> dict:
    """rows {task: list of JSON docs, or of text lines for rolling} -> files and YAML; {task: lm-eval name}."""
    directory.mkdir(parents=True, exist_ok=True)
    names = {}
    for task, docs in rows.items():
        name = f"{prefix}_{task}"
        if task == "rolling":
            data = directory / f"{name}.txt"
            data.write_text("".join(line + "\n" for line in docs))
        else:
            data = directory / f"{name}.jsonl"
            data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (directory / f"{name}.yaml").write_text(_yaml(name, data, _BODIES[task]))
        names[task] = name
    return names


def write_tasks(items: dict, directory: Path, prefix: str = "synthetic") -> dict:
    """The items as lm-eval tasks in `directory` (words t{i}, one per token); returns {task: lm-eval name}."""
    rows = {"mc": [{"context": token_words(c), "choices": [token_words(x) for x in ch], "label": y}
                   for c, ch, y in items["mc"]],
            "last_token": [{"context": token_words(c), "target": f"t{t}"} for c, t in items["last_token"]],
            "rolling": [token_words(d) for d in items["rolling"]]}
    return _write(Path(directory), prefix, rows)


def text_tasks(lines: list[str], directory: Path, prefix: str = "text") -> dict:
    """Real text: last_token (each line's last word after its other words, as LAMBADA) and rolling (the lines);
    lines of one word serve only the rolling task. Returns {task: lm-eval name}."""
    last = [{"context": " ".join(w[:-1]), "target": w[-1]} for w in (line.split() for line in lines) if len(w) > 1]
    return _write(Path(directory), prefix, {"last_token": last, "rolling": list(lines)})


# ---- the ceiling: the scorer that knows p* -------------------------------------------------------------------
def continuation_logprob(lang, context, continuation) -> float:
    """log p*(continuation | context) by the chain rule: a token after a full context of `order` tokens has the
    source's probability, one inside a document's first `order` tokens is a uniform draw (1/V)."""
    tokens = np.concatenate([np.asarray(context, dtype=np.int64), np.asarray(continuation, dtype=np.int64)])
    j = np.arange(len(context), len(tokens))
    lp = np.full(j.size, -math.log(lang.vocab_size))
    full = j >= lang.order
    if full.any():
        ctx = np.array([lang.context_id(tokens[k - lang.order:k]) for k in j[full]])
        with np.errstate(divide="ignore"):
            lp[full] = np.log(lang.distributions(ctx)[np.arange(ctx.size), tokens[j[full]]])
    return float(lp.sum())


def _mc_metrics(scores: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> dict:
    """lm-eval's acc (argmax of the summed log-likelihood) and acc_norm (divided by the choice's characters)."""
    return {"acc": float((np.argmax(scores, 1) == labels).mean()),
            "acc_norm": float((np.argmax(scores / lengths, 1) == labels).mean())}


def bayes_scores(lang, items: dict) -> dict:
    """{task: {metric: value}} of the scorer that knows p*, on the same items and with lm-eval's definitions
    (rolling: the first token after lm-eval's EOS prefix is a document start, uniform)."""
    scores = np.array([[continuation_logprob(lang, c, x) for x in ch] for c, ch, _ in items["mc"]])
    lengths = np.array([[len(token_words(x)) for x in ch] for _, ch, _ in items["mc"]], dtype=float)
    labels = np.array([y for _, _, y in items["mc"]])
    target = np.array([t for _, t in items["last_token"]])
    p = np.stack([lang.next_distribution(c) for c, _ in items["last_token"]])  # [N, V]
    ll = np.log(p[np.arange(len(target)), target])
    docs = items["rolling"]
    total = sum(continuation_logprob(lang, [], d) for d in docs)
    return {"mc": _mc_metrics(scores, lengths, labels),
            "last_token": {"acc": float((p.argmax(1) == target).mean()), "perplexity": float(np.exp(-ll.mean()))},
            "rolling": {"word_perplexity": float(np.exp(-total / sum(len(d) for d in docs)))}}


def expected_last_token_acc(lang, items: dict) -> tuple[float, float]:
    """The expected last_token acc of the Bayes scorer over the draw of the targets (mean of max p* per item),
    and the standard error of an observed acc on these items around it."""
    pmax = np.array([lang.next_distribution(c).max() for c, _ in items["last_token"]])
    return float(pmax.mean()), float(math.sqrt((pmax * (1 - pmax)).sum()) / len(pmax))


class TruthLogitsProcessor:
    """Returns log p*(. | the row's last token) over the model's vocabulary, whatever the scores: the truth as a
    method (-inf where p* = 0), for the harness run that must reproduce the ceiling."""

    def __init__(self, lang, model_vocab: int):
        self.lang, self.model_vocab = lang, model_vocab

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        from tempnet.demo.temperatures_truth import truth_rows

        p = truth_rows(self.lang, input_ids[:, -1].cpu().numpy(), self.model_vocab)
        with np.errstate(divide="ignore"):
            return torch.as_tensor(np.log(p), dtype=scores.dtype, device=scores.device)

    def positions(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        b, length, v = logits.shape
        return self(input_ids.reshape(b * length, 1), logits.reshape(b * length, v)).reshape(b, length, v)


# ---- lm-eval ------------------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, processors: dict, task_dir: Path, names: dict, batch_size: int = 64) -> dict:
    """{method: {task: {metric: value}}}: lm-eval's `simple_evaluate` on the local tasks `names` ({task: lm-eval
    name}) with `TempNetLM(model, logits_processor=processors[method])` (model: a causal LM with a tau = 1 head)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from tempnet.integrations.lm_eval import TempNetLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False, verbosity="ERROR")
    # logits_cache=False: lm-eval 0.4.13 shares one forward among requests whose context + continuation[:-1]
    # agree and reads the shared logits as if every such request had a one-token continuation, so a last_token
    # item whose context is an mc item's prefix + 3 tokens got the score of that item's first position
    lm = TempNetLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=batch_size, logits_cache=False)
    out = {}
    for method, proc in processors.items():
        lm.logits_processor = proc
        res = simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager, bootstrap_iters=0,
                              verbosity="ERROR")["results"]
        out[method] = {task: {m: float(res[name][f"{m},none"]) for m in METRICS[task]} for task, name in names.items()}
    return out
