"""Offline stand-ins for debug runs: a generated corpus, a tokenizer trained on it and a random base model.

`configs/debug.yaml` of every LLM folder sets `data.synthetic: true`; the trainer then calls
`prepare_debug_assets` (rank 0 first) and trains through the real pipeline (files -> tokenizer ->
token cache -> model), with no download. Everything is seeded, so every run and rank makes the
same assets. The tokenizer is of the model family's own kind: byte-level BPE for GPT-2,
sentencepiece (byte fallback) for LLaMA.
"""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["prepare_debug_assets", "synthetic_documents", "synthetic_instructions", "train_tokenizer", "save_base_model"]

_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
_NOUNS = "cat dog bird fish horse mouse tree house river stone".split()
_ADJS = "big small red blue old young".split()
_VERBS = "sees likes follows finds".split()


def synthetic_documents(n: int, seed: int) -> list[str]:
    """Documents mixing certain continuations (counting) with uncertain ones (random nouns)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.4:
                start = rng.randrange(6)
                sentences.append("count " + " ".join(_NUMBERS[start:start + rng.randint(3, 6)]) + " .")
            else:
                sentences.append(f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
                                 f"the {rng.choice(_NOUNS)} .")
        docs.append(" ".join(sentences))
    return docs


def synthetic_instructions(n: int, seed: int) -> list[dict]:
    """Alpaca-style records whose answers follow from the prompt."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        if rng.random() < 0.5:
            start, length = rng.randrange(6), rng.randint(2, 5)
            records.append({"instruction": f"Count on from {_NUMBERS[start]}.", "input": "",
                            "output": " ".join(_NUMBERS[start + 1:start + 1 + length])})
        else:
            words = [rng.choice(_NOUNS) for _ in range(rng.randint(2, 4))]
            records.append({"instruction": "Repeat the words.", "input": " ".join(words), "output": " ".join(words)})
    return records


def train_tokenizer(arch: str, texts: list[str], vocab_size: int, target: Path) -> None:
    """Train a tokenizer of the model family's kind on `texts` and save it to `target` (a directory):
    byte-level BPE for gpt2, sentencepiece BPE with byte fallback (a LLaMA tokenizer) for every other family."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if arch == "gpt2":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import GPT2TokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        eot = "<|endoftext|>"
        GPT2TokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot).save_pretrained(tmp)
    else:
        import sentencepiece as spm
        from transformers import LlamaTokenizer

        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(texts))
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(tmp / "sp"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
            hard_vocab_limit=False, minloglevel=2)
        sp_dir = tmp / "sp_dir"
        sp_dir.mkdir()
        shutil.copy(tmp / "sp.model", sp_dir / "tokenizer.model")  # LlamaTokenizer(vocab_file=...) misreads it
        LlamaTokenizer.from_pretrained(sp_dir, add_bos_token=True).save_pretrained(tmp)
        for name in ("sp_dir", "corpus.txt", "sp.model", "sp.vocab"):
            p = tmp / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    tmp.rename(target)


@contextmanager
def _without_zero3():
    """Rank 0 builds the debug base model alone (the others wait at a barrier), so not under a live ZeRO-3
    config: transformers' zero.Init would partition it with collectives the other ranks never join."""
    from transformers.integrations import deepspeed as hf_deepspeed

    live = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers' one handle on the live config
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = live


def save_base_model(arch: str, base: dict, tokenizer_dir: Path, seed: int, target: Path) -> None:
    """A random plain Hugging Face causal LM (no TempNet) standing in for a pretrained checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempnet.integrations.families import config_class

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_class(arch)(**{"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, **base})
    torch.manual_seed(seed)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _without_zero3():
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)


def prepare_debug_assets(cfg, output_dir: str | Path) -> dict:
    """Create the assets under OUTPUT_DIR/debug_assets (if missing) and return the config overrides
    (data.files, model.tokenizer, model.path) that point at them. Run on rank 0 first."""
    root = Path(output_dir) / "debug_assets"
    root.mkdir(parents=True, exist_ok=True)
    seed, n = cfg.train.seed, cfg.data.synthetic_documents
    if cfg.data.format == "alpaca":
        data_file, records = root / "instructions.json", synthetic_instructions(n, seed)
        texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in records]
        payload = json.dumps(records, indent=0)
    else:
        data_file, texts = root / "corpus.jsonl", synthetic_documents(n, seed)
        payload = "".join(json.dumps({cfg.data.text_field: t}) + "\n" for t in texts)
    if not data_file.exists():
        tmp = data_file.with_suffix(".tmp")
        tmp.write_text(payload)
        tmp.rename(data_file)
    tokenizer_dir = root / f"tokenizer-{cfg.model.arch}"
    if not tokenizer_dir.exists():
        train_tokenizer(cfg.model.arch, texts + list(_NUMBERS + _NOUNS), cfg.data.synthetic_vocab_size, tokenizer_dir)
    overrides = {"data": {"files": [str(data_file)]}, "model": {"tokenizer": str(tokenizer_dir)}}
    if cfg.model.mode != "scratch":
        base_dir = root / f"base-{cfg.model.arch}"
        if not base_dir.exists():
            save_base_model(cfg.model.arch, cfg.model.base, tokenizer_dir, seed, base_dir)
        overrides["model"]["path"] = str(base_dir)
    return overrides
