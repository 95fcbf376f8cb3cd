"""The language-model half of the demo: four ablation objectives (+ the studied variant) on one budget.

Each objective is one run of the shared LLM trainer (`tempnet.train.lm_trainer.train`) on local text
(`data.files=[train.txt]`, `model.tokenizer=DIR`, `data.synthetic=false`) with the same steps, seed and
data; then its `final/` checkpoint is loaded through the Hugging Face integration and evaluated on the
validation documents:

    val_ppl           exp(mean CE(z, y)): the raw logits, tau = 1
    val_ppl_tau       exp(mean CE(z / tau, y)): the logits divided by the head's tau (what generation uses)
    true_entropy_ppl  exp(mean H(p_true)) over the same positions: the floor (synthetic language only)

and the head's tau at every validation position is compared with the true next-token entropy, with the
DRO-optimal tau of the model's own logits (`dro_optimal_tau`: the tau minimising the model's robust loss
at that position) and with the DRO-optimal tau of the true distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tempnet.errors import UserError

__all__ = ["LMSetup", "Corpus", "synthetic_corpus", "text_corpus", "pack_lines", "lm_overrides", "train_objective",
           "evaluate_lm", "tau_stats", "truth_stats", "generate_sample", "ROWS", "SPREAD_THRESHOLD"]

#: A correlation of tau with anything is reported only when tau's std over the positions exceeds this; below it
#: tau is one value plus numerical noise (e.g. TempNet still on its plateau) and a rank correlation is noise.
SPREAD_THRESHOLD = 1e-3

#: The rows of the LM comparison: the paper's four ablation objectives, then the studied pooling variant.
ROWS = {
    "ce": ["objective=ce"],
    "dro": ["objective=dro"],
    "tempnet_ce": ["objective=tempnet_ce"],
    "tempnet_dro": ["objective=tempnet_dro"],
    "tempnet_dro+uncentred": ["objective=tempnet_dro", "tempnet.pooling=uncentred"],
}


@dataclass
class LMSetup:
    """The shared budget and model of every LM run (one value per field for all objectives)."""

    steps: int = 1000
    """Optimizer steps per objective."""
    batch_size: int = 16
    """Sequences per step."""
    seq_len: int = 64
    """Tokens per training sequence (a synthetic document is seq_len - 1 tokens plus its EOS)."""
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    lr: float = 1e-2
    """Peak learning rate of the language model (cosine to lr / 10, warm-up 5 % of the steps)."""
    tempnet_lr: float = 1e-2
    """TempNet's constant learning rate (its own Adam group)."""
    tau_min: float = 0.05
    tau_max: float = 5.0
    rho_gap: float = 2.0
    """rho = log V - rho_gap (rho must stay below log V)."""
    extra: list = field(default_factory=list)
    """More `key=value` overrides for every run (hidden --override flag)."""


@dataclass
class Corpus:
    """Local training text, a tokenizer directory, and the validation set as token blocks.

    valid: [N, L] int64 model inputs; targets are valid[:, 1:] at the positions of `mask` [N, L-1]
    (True = scored). truth: per scored position (flattened in row order)
    the true entropy, the true DRO-optimal tau and the support size, or None for real text.
    """

    train_file: Path
    tokenizer_dir: Path
    vocab_size: int
    rho: float
    valid: np.ndarray
    mask: np.ndarray
    truth: dict | None = None
    language: object | None = None
    valid_lines: list | None = None
    """Real text: the validation lines (the source of `valid`)."""


def synthetic_corpus(root: Path, setup: LMSetup, n_train_docs: int, n_valid_docs: int, seed: int = 0) -> Corpus:
    """The synthetic language (V = 256 bigram, `tempnet.data.synthetic_lm`), its corpus and tokenizer.

    A document is seq_len - 1 tokens, so the trainer's packed stream (document + EOS, cut into blocks of
    seq_len) puts every document at positions 0..seq_len-2 of its own block; validation rows are the
    documents alone, in the same positions, and every target (each with a full context) is scored.
    """
    from tempnet.data.synthetic_lm import SyntheticLanguage

    lang = SyntheticLanguage(vocab_size=256, order=1, seed=seed)
    paths = lang.write_corpus(root / "data", n_train_docs, n_valid_docs, setup.seq_len - 1, seed=seed)
    lang.save_tokenizer(root / "tokenizer")
    v = lang.vocab_size
    rho = math.log(v) - setup.rho_gap
    docs = np.load(paths["valid_tokens"]).astype(np.int64)  # [N, L-1]
    mask = np.ones((len(docs), docs.shape[1] - 1), dtype=bool)
    truths = [lang.position_truth(d, rho, setup.tau_min, setup.tau_max) for d in docs]
    truth = {"entropy": np.concatenate([t.entropy for t in truths]),
             "tau_star": np.concatenate([t.tau_star for t in truths]),
             "support_size": np.concatenate([t.support_size for t in truths])}
    return Corpus(paths["train"], root / "tokenizer", v + 2, rho, docs, mask, truth, lang)


def text_corpus(path: Path, root: Path, setup: LMSetup, vocab_size: int = 512) -> Corpus:
    """Any local text file: the last tenth of its non-empty lines is validation, a byte-level BPE tokenizer
    (`tempnet.train.lm_debug.train_tokenizer`) is trained on the rest; validation is the tokenised
    lines joined by EOS (as the trainer packs them), cut into rows of seq_len tokens, every target scored."""
    from transformers import AutoTokenizer

    from tempnet.train.lm_debug import train_tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file {path}")
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        raise UserError(f"--data {path}: need at least 2 non-empty lines (training and validation), got {len(lines)}")
    n_valid = max(1, len(lines) // 10)
    train_lines, valid_lines = lines[:-n_valid], lines[-n_valid:]
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.txt").write_text("\n".join(train_lines) + "\n")
    train_tokenizer("gpt2", train_lines, vocab_size, root / "tokenizer")
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    valid = pack_lines(tok, valid_lines, setup.seq_len)
    if len(valid) == 0:
        raise UserError(f"--data {path}: the validation part ({n_valid} lines) has fewer tokens than one sequence of "
                        f"{setup.seq_len}; give a longer file")
    v = len(tok)
    return Corpus(data / "train.txt", root / "tokenizer", v, math.log(v) - setup.rho_gap, valid,
                  np.ones((len(valid), setup.seq_len - 1), dtype=bool), valid_lines=valid_lines)


def pack_lines(tok, lines: list[str], width: int) -> np.ndarray:
    """Lines tokenised and joined by EOS (as the trainer packs them), cut into rows [N, width] (the rest dropped)."""
    stream = [t for line in lines for t in tok(line)["input_ids"] + [tok.eos_token_id]]
    n_rows = len(stream) // width
    return np.asarray(stream[:n_rows * width], dtype=np.int64).reshape(n_rows, width)


def lm_overrides(setup: LMSetup, corpus: Corpus, seed: int, cache_dir: Path) -> list[str]:
    """The trainer overrides shared by every objective (same model, data, steps, seed, tau range, rho)."""
    base = (f"{{n_layer: {setup.n_layer}, n_embd: {setup.n_embd}, n_head: {setup.n_head}, "
            f"n_positions: {setup.seq_len}, vocab_size: {corpus.vocab_size}, "
            "resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}")
    return [
        "model.mode=scratch", "model.arch=gpt2", f"model.base={base}", f"model.tokenizer={corpus.tokenizer_dir}",
        f"data.files=[{corpus.train_file}]", "data.synthetic=false", f"data.seq_len={setup.seq_len}",
        f"data.cache_dir={cache_dir}",
        f"tempnet.rho={corpus.rho!r}", f"tempnet.tau_min={setup.tau_min}", f"tempnet.tau_max={setup.tau_max}",
        f"tempnet.lr={setup.tempnet_lr}",
        f"optim.lr={setup.lr}", f"optim.min_lr={setup.lr / 10}", f"optim.warmup_steps={max(1, setup.steps // 20)}",
        f"train.max_steps={setup.steps}", f"train.micro_batch_size={setup.batch_size}",
        f"train.global_batch_size={setup.batch_size}", f"train.seed={seed}", f"train.save_every={setup.steps}",
        "train.keep_last=1", "train.tensorboard=false", f"train.log_every={max(1, setup.steps // 100)}",
        *setup.extra,
    ]


def train_objective(row: str, setup: LMSetup, corpus: Corpus, seed: int, out: Path, cache_dir: Path) -> Path:
    """One run of the shared LLM trainer for a row of `ROWS`; returns its output directory."""
    from tempnet.config import load_config
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_trainer import train

    cfg = load_config(LMTrainConfig, None, lm_overrides(setup, corpus, seed, cache_dir) + ROWS[row])
    train(cfg, out, overwrite=True)
    return out


@torch.no_grad()
def _forward(model, valid: np.ndarray, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits [N, L, V] and tau [N, L] of the head in eval mode (no dropout)."""
    logits, taus = [], []
    for s in range(0, len(valid), batch):
        out = model(input_ids=torch.as_tensor(valid[s:s + batch]))
        logits.append(out.logits * out.tau)  # the wrapper returns logits / tau: undo it
        taus.append(out.tau[..., 0])
    return torch.cat(logits), torch.cat(taus)


def evaluate_lm(run_dir: Path, corpus: Corpus, row: str) -> dict:
    """Perplexities and the tau of every scored position for one trained run (its final/ checkpoint).

    Returns {"val_ppl", "val_ppl_tau", "true_entropy_ppl" (None for real text), "tau" [P], "tau_dro_optimal"
    [P] (the DRO-optimal tau of the model's own logits, `dro_optimal_tau` with the run's rho and range)}.
    """
    from tempnet.data.synthetic_lm import dro_optimal_tau
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(str(run_dir / "final")).eval()
    logits, tau = _forward(model, corpus.valid)  # [N, L, V], [N, L]
    z = logits[:, :-1][torch.as_tensor(corpus.mask)].double()  # [P, V] scored positions
    t = tau[:, :-1][torch.as_tensor(corpus.mask)].double()  # [P]
    y = torch.as_tensor(corpus.valid[:, 1:][corpus.mask])  # [P]
    ce = torch.nn.functional.cross_entropy(z, y)
    ce_tau = torch.nn.functional.cross_entropy(z / t[:, None], y)
    cfg = model.tempnet_config
    out = {"val_ppl": math.exp(ce.item()), "val_ppl_tau": math.exp(ce_tau.item()),
           "true_entropy_ppl": None if corpus.truth is None else float(np.exp(corpus.truth["entropy"].mean())),
           "tau": t.numpy(), "row": row}
    if row != "ce" and corpus.truth is not None:
        out["tau_dro_optimal"] = dro_optimal_tau(z.numpy(), cfg.rho, cfg.tau_min, cfg.tau_max)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation, None when either side is constant (no ranking to correlate)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def tau_stats(ev: dict, truth: dict | None) -> dict:
    """How the head's tau varies over the scored positions: spread, and (synthetic language) Spearman
    correlations with the true entropy, the DRO-optimal tau of the model's own logits
    (`spearman_dro_optimal`) and the DRO-optimal tau of the true distribution (`spearman_true_tau_star`);
    the correlations are None when tau's std is at most `SPREAD_THRESHOLD` (no spread to rank)."""
    t = ev["tau"]
    out = {"n_positions": int(t.size), "tau_mean": float(t.mean()), "tau_std": float(t.std()),
           "tau_p5": float(np.percentile(t, 5)), "tau_p95": float(np.percentile(t, 95))}
    if truth is not None and out["tau_std"] <= SPREAD_THRESHOLD:
        out.update(spearman=None, spearman_dro_optimal=None, spearman_true_tau_star=None)
    elif truth is not None:
        out["spearman"] = _spearman(t, truth["entropy"])
        out["spearman_dro_optimal"] = (_spearman(t, ev["tau_dro_optimal"]) if "tau_dro_optimal" in ev else None)
        out["spearman_true_tau_star"] = _spearman(t, truth["tau_star"])
    return out


def truth_stats(truth: dict) -> dict:
    """The same statistics for the true distribution's DRO-optimal tau (the reference row of the tau table)."""
    ts = truth["tau_star"]
    return {"tau_mean": float(ts.mean()), "tau_std": float(ts.std()), "tau_p5": float(np.percentile(ts, 5)),
            "tau_p95": float(np.percentile(ts, 95)), "spearman": _spearman(ts, truth["entropy"]),
            "spearman_true_tau_star": 1.0}


@torch.no_grad()
def generate_sample(run_dir: Path, corpus: Corpus, n_tokens: int = 48, seed: int = 0) -> dict:
    """Sample n_tokens from the trained model (logits / its tau, plain sampling) after the first token of
    the first validation row; returns the tokens, the tau used for each and (synthetic language) each
    step's true entropy."""
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(str(run_dir / "final")).eval()
    prompt = torch.as_tensor(corpus.valid[:1, :1])  # [1, 1]
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=n_tokens, do_sample=True, top_k=0, return_tau=True,
                         pad_token_id=model.config.eos_token_id)
    tokens = out.sequences[0].tolist()
    sample = {"tokens": tokens[1:], "tau": out["tau"][0].tolist(), "entropy": None}
    lang = corpus.language
    if lang is not None:  # the context of generated token i is the token before it
        contexts = tokens[:-1]
        sample["entropy"] = [lang.entropy([c]) if c < lang.vocab_size else None for c in contexts]
    return sample
