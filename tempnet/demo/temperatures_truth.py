"""The truth of a split of the synthetic language, and the reference rules that read it (tempnet.demo.temperatures).

On the demo's synthetic language p*(. | context) is known at every position: a `Split` carries it beside its
documents, so a temperature rule is judged exactly; `TruthTemperatureLogitsProcessor` is the per-position
KL-optimal tau and the truth's DRO-optimal tau, the references no decoding rule can read.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from tempnet.eval import calibration as C
from tempnet.integrations.decoding import TemperatureLogitsProcessor

__all__ = ["Split", "text_split", "truth_rows", "make_split", "TruthTemperatureLogitsProcessor"]


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
