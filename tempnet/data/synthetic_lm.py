"""A synthetic language whose next-token uncertainty is known exactly, position by position.

The source is a sparse random n-gram (Markov) chain over `vocab_size` tokens: each context (the
previous `order` tokens) has its own support of k plausible continuations, k drawn from
`support_sizes` (1 to dozens), with Dirichlet (or Zipf) weights over the support. So for every
position of a sampled sequence the true next-token distribution p_true, its entropy and the
DRO-optimal temperature of the paper's robust loss (Qiu et al., ICML 2024, Sec. 3) are known.

Documents: the first `order` tokens are drawn uniformly over the vocabulary (their truth is the
uniform distribution, entropy log V), every later token from p_true(. | previous `order` tokens).
Each context's support contains one token of a fixed random cycle through the vocabulary, so the
chain cannot be trapped in a small closed set of deterministic contexts.

Text form, for the LLM trainers (`data.files=[train.txt]`): token i is the word ``t{i}``, one
document per line. `save_tokenizer` writes a word-level `PreTrainedTokenizerFast` in which token id
== source id (ids 0..V-1), then ``<|endoftext|>`` (id V; eos, bos and pad) and ``<unk>`` (id V+1),
so the model's vocabulary must be at least V + 2 and every LM position maps 1:1 to the truth. In a
packed stream (documents + EOS) the token after an EOS is a document's first token: uniform truth.

DRO-optimal tau: for logits z the tau minimising the robust loss tau*log((1/V) sum_k
exp((z_k - z_y)/tau)) + tau*rho solves KL(softmax(z/tau) || uniform) = rho (its tau-derivative is
rho - KL, and the label drops out of it). On the truth z = log p_true. Zero-probability tokens:
by default (`floor=None`) the logits are restricted to the support (z = -inf elsewhere), so
softmax(z/tau) stays on the support and KL ranges over [log V - log k, log V]; a context whose
support is too small for KL to reach rho (log k <= log V - rho, e.g. every deterministic context)
wants the largest tau, and gets tau_max. With `floor=eps` the logits are log(max(p, eps)) instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempnet.losses.lm import dro_optimal_tau, entropy, kl_to_uniform  # noqa: F401  (re-exported)

__all__ = ["SyntheticLanguage", "PositionTruth", "dro_optimal_tau", "kl_to_uniform", "entropy",
           "token_words", "EOS_TOKEN", "UNK_TOKEN"]

EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"
_MAX_TABLE = 40_000_000  # contexts x max support entries kept in memory


def token_words(tokens) -> str:
    """Source ids -> the text form "t17 t3 ..."."""
    return " ".join(f"t{int(t)}" for t in tokens)


@dataclass
class PositionTruth:
    """The truth of predicting tokens[1:] from their prefixes, one entry per target (length n - 1).

    entropy:      H(p_true(. | context)) in nats                      [n-1]
    tau_star:     DRO-optimal tau of z = log p_true (see the module doc) [n-1]
    logp:         log p_true(actual next token | context) (-inf if impossible) [n-1]
    support_size: number of tokens with positive true probability    [n-1]
    """

    entropy: np.ndarray
    tau_star: np.ndarray
    logp: np.ndarray
    support_size: np.ndarray


class SyntheticLanguage:
    """A seeded sparse random n-gram source with per-context support sizes (see the module doc).

    Args:
        vocab_size: V, number of source tokens (>= 2).
        order: number of previous tokens in a context (1 = bigram, 2 = trigram).
        seed: seeds the whole language (supports and weights); sampling takes its own rng.
        support_sizes: the per-context number k of plausible continuations is drawn uniformly from
            these (each in [1, V]).
        weights: "dirichlet" (weights ~ Dirichlet(alpha) over the support) or "zipf" (weights
            proportional to rank^-alpha in a random order).
        alpha: the Dirichlet concentration or the Zipf exponent (> 0).
    """

    def __init__(self, vocab_size: int = 256, order: int = 1, seed: int = 0,
                 support_sizes=(1, 2, 4, 8, 16, 32, 64), weights: str = "dirichlet", alpha: float = 1.0):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        sizes = np.asarray(sorted(set(int(k) for k in support_sizes)))
        if sizes.size == 0 or sizes[0] < 1 or sizes[-1] > vocab_size:
            raise ValueError(f"support_sizes must be non-empty and within [1, vocab_size={vocab_size}], "
                             f"got {tuple(support_sizes)}")
        if weights not in ("dirichlet", "zipf"):
            raise ValueError(f"weights must be 'dirichlet' or 'zipf', got {weights!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        n_ctx, k_max = vocab_size ** order, int(sizes[-1])
        if n_ctx * k_max > _MAX_TABLE:
            raise ValueError(f"{vocab_size}^{order} contexts x support {k_max} is too large a table "
                             f"(> {_MAX_TABLE} entries): lower vocab_size, order or max(support_sizes)")
        self.vocab_size, self.order, self.seed = vocab_size, order, seed
        self.support_sizes, self.weights, self.alpha = tuple(int(k) for k in sizes), weights, float(alpha)
        self.num_contexts = n_ctx
        rng = np.random.default_rng(seed)
        k = rng.choice(sizes, size=n_ctx)  # [C]
        # supports: the cycle successor of the context's last token first, then distinct random others
        cycle = rng.permutation(vocab_size)
        successor = np.empty(vocab_size, dtype=np.int64)
        successor[cycle] = np.roll(cycle, -1)
        last = np.arange(n_ctx) % vocab_size  # the newest token of context c (see _context_ids)
        keys = rng.random((n_ctx, vocab_size))
        keys[np.arange(n_ctx), successor[last]] = -1.0  # sorts first
        support = np.argsort(keys, axis=1)[:, :k_max]  # [C, K]
        mask = np.arange(k_max)[None, :] < k[:, None]  # [C, K]
        if weights == "dirichlet":
            raw = rng.gamma(alpha, size=(n_ctx, k_max))
        else:
            keys = np.where(mask, rng.random((n_ctx, k_max)), np.inf)  # a random order of the k slots
            ranks = np.argsort(np.argsort(keys, axis=1), axis=1) + 1.0  # 1..k on the support
            raw = ranks ** -alpha
        raw = np.where(mask, np.maximum(raw, 1e-300), 0.0)
        self.support = np.where(mask, support, -1)  # [C, K] token ids, -1 = padding
        self.probs = raw / raw.sum(axis=1, keepdims=True)  # [C, K] float64
        self.support_size = k  # [C]
        self._cum = np.cumsum(self.probs, axis=1)
        self._cum[np.arange(n_ctx), k - 1] = 1.0  # exact last bucket
        p = self.probs
        self.context_entropy = np.maximum(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1), 0.0)  # [C]

    # ---------------------------------------------------------------- contexts and distributions
    def _context_ids(self, windows: np.ndarray) -> np.ndarray:
        """[..., order] token windows (oldest first) -> context ids [...]; the newest token is c % V."""
        ids = np.zeros(windows.shape[:-1], dtype=np.int64)
        for j in range(self.order):
            ids = ids * self.vocab_size + windows[..., j]
        return ids

    def context_id(self, context) -> int:
        """The id of one context: its last `order` tokens, oldest first."""
        ctx = np.asarray(context, dtype=np.int64).reshape(-1)
        if ctx.size < self.order:
            raise ValueError(f"a context needs the previous {self.order} tokens, got {ctx.size}")
        ctx = ctx[-self.order:]
        if ctx.min() < 0 or ctx.max() >= self.vocab_size:
            raise ValueError(f"context tokens must lie in [0, {self.vocab_size}), got {ctx.tolist()}")
        return int(self._context_ids(ctx))

    def next_distribution(self, context) -> np.ndarray:
        """p_true(. | context) as a dense [V] float64 array (context: the previous >= `order` tokens)."""
        return self.distributions(np.array([self.context_id(context)]))[0]

    def distributions(self, context_ids: np.ndarray) -> np.ndarray:
        """Dense p_true of many contexts: ids [N] -> [N, V] float64."""
        context_ids = np.asarray(context_ids, dtype=np.int64)
        out = np.zeros((context_ids.size, self.vocab_size))
        sup, pr = self.support[context_ids], self.probs[context_ids]
        rows = np.repeat(np.arange(context_ids.size), sup.shape[1])
        keep = sup.reshape(-1) >= 0
        out[rows[keep], sup.reshape(-1)[keep]] = pr.reshape(-1)[keep]
        return out

    def entropy(self, context) -> float:
        """H(p_true(. | context)) in nats."""
        return float(self.context_entropy[self.context_id(context)])

    def true_logits(self, context_ids: np.ndarray, floor: float | None = None) -> np.ndarray:
        """z = log p_true [N, V]: -inf outside the support (floor=None) or log(max(p, floor))."""
        p = self.distributions(context_ids)
        if floor is None:
            with np.errstate(divide="ignore"):
                return np.log(p)
        if not 0 < floor < 1:
            raise ValueError(f"floor must lie in (0, 1), got {floor}")
        return np.log(np.maximum(p, floor))

    def context_tau_star(self, rho: float, tau_min: float, tau_max: float, floor: float | None = None,
                         context_ids: np.ndarray | None = None) -> np.ndarray:
        """DRO-optimal tau of z = log p_true for the given contexts (default: all) [N]."""
        ids = np.arange(self.num_contexts) if context_ids is None else np.asarray(context_ids)
        out = np.empty(ids.size)
        for s in range(0, ids.size, 4096):  # bounded memory for order >= 2
            out[s:s + 4096] = dro_optimal_tau(self.true_logits(ids[s:s + 4096], floor), rho, tau_min, tau_max)
        return out

    # ---------------------------------------------------------------- sampling
    def sample_documents(self, n_docs: int, doc_len: int, rng: np.random.Generator) -> np.ndarray:
        """n_docs independent documents of doc_len tokens: [n_docs, doc_len] int64."""
        if doc_len < 1 or n_docs < 0:
            raise ValueError(f"need doc_len >= 1 and n_docs >= 0, got {doc_len} and {n_docs}")
        out = np.empty((n_docs, doc_len), dtype=np.int64)
        head = min(self.order, doc_len)
        out[:, :head] = rng.integers(0, self.vocab_size, size=(n_docs, head))
        for i in range(head, doc_len):
            ctx = self._context_ids(out[:, i - self.order:i])  # [n_docs]
            u = rng.random(n_docs)
            slot = (self._cum[ctx] < u[:, None]).sum(axis=1)  # first bucket whose cumsum >= u
            out[:, i] = self.support[ctx, np.minimum(slot, self.support_size[ctx] - 1)]
        return out

    def sample(self, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """One document of n_tokens tokens [n_tokens] int64."""
        return self.sample_documents(1, n_tokens, rng)[0]

    # ---------------------------------------------------------------- the truth of a sequence
    def position_truth(self, tokens, rho: float, tau_min: float, tau_max: float,
                       floor: float | None = None) -> PositionTruth:
        """The truth of each prediction tokens[i] -> tokens[i+1] of one document (from its start).

        Targets inside the document's first `order` tokens are uniform draws: entropy log V, logits
        constant, so KL = 0 < rho and tau_star = tau_min. Arrays have length len(tokens) - 1 and are
        aligned with an LM's shifted labels (entry i predicts tokens[i + 1]).
        """
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if t.size < 2:
            raise ValueError(f"need a document of at least 2 tokens, got {t.size}")
        if t.min() < 0 or t.max() >= self.vocab_size:
            raise ValueError(f"tokens must lie in [0, {self.vocab_size})")
        n = t.size - 1
        ent = np.full(n, math.log(self.vocab_size))
        tau = np.full(n, float(tau_min))
        logp = np.full(n, -math.log(self.vocab_size))
        size = np.full(n, self.vocab_size, dtype=np.int64)
        j = np.arange(self.order, t.size)  # targets with a full context
        if j.size:
            windows = np.stack([t[j - self.order + s] for s in range(self.order)], axis=-1)  # [m, order]
            ctx = self._context_ids(windows)
            ent[j - 1] = self.context_entropy[ctx]
            size[j - 1] = self.support_size[ctx]
            uniq, inv = np.unique(ctx, return_inverse=True)
            tau[j - 1] = self.context_tau_star(rho, tau_min, tau_max, floor, uniq)[inv]
            hit = self.support[ctx] == t[j][:, None]  # [m, K]
            p = (self.probs[ctx] * hit).sum(axis=1)
            with np.errstate(divide="ignore"):
                logp[j - 1] = np.log(p)
        return PositionTruth(ent, tau, logp, size)

    # ---------------------------------------------------------------- files for the LLM trainers
    def write_corpus(self, directory, n_train_docs: int, n_valid_docs: int, doc_len: int,
                     seed: int = 0) -> dict[str, Path]:
        """Write train.txt / valid.txt (one document per line, words t{i}) and the same documents as
        train_tokens.npy / valid_tokens.npy ([n_docs, doc_len] source ids). Returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        paths = {}
        for split, n in (("train", n_train_docs), ("valid", n_valid_docs)):
            docs = self.sample_documents(n, doc_len, rng)
            paths[split] = directory / f"{split}.txt"
            paths[split].write_text("".join(token_words(d) + "\n" for d in docs))
            paths[f"{split}_tokens"] = directory / f"{split}_tokens.npy"
            np.save(paths[f"{split}_tokens"], docs)
        return paths

    def save_tokenizer(self, directory) -> Path:
        """Write a word-level Hugging Face tokenizer whose ids are the source ids (see the module doc).

        Load it with `AutoTokenizer.from_pretrained(directory)`; encoding "t5 t0" gives [5, 0] (no
        special tokens are added); EOS/BOS/PAD is id V, <unk> id V + 1.
        """
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {f"t{i}": i for i in range(self.vocab_size)}
        vocab[EOS_TOKEN], vocab[UNK_TOKEN] = self.vocab_size, self.vocab_size + 1
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                       pad_token=EOS_TOKEN, unk_token=UNK_TOKEN)
        directory = Path(directory)
        fast.save_pretrained(directory)
        (directory / "synthetic_language.json").write_text(json.dumps(self.describe(), indent=1))
        return directory

    def describe(self) -> dict:
        """The constructor arguments and a summary (to store beside a corpus)."""
        return {"vocab_size": self.vocab_size, "order": self.order, "seed": self.seed,
                "support_sizes": list(self.support_sizes), "weights": self.weights, "alpha": self.alpha,
                "mean_entropy": float(self.context_entropy.mean())}
