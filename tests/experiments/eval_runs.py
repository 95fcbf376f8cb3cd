"""Helpers of the evaluation tests: a tiny LLaMA checkpoint with a TempNet and its own tokenizer, local lm-eval
tasks (no download), all written into a test's tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import SP_VOCAB as VOCAB
from helpers import local_tasks  # noqa: F401  (re-exported)
from helpers import train_llama_tokenizer as train_tokenizer  # noqa: F401  (re-exported)

#: A minimal chat template (the tokenizer writes BOS itself in the LLaMA-2 fallback; the template does here).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_checkpoint(path: Path, tokenizer, chat_template: str | None = None, seed: int = 0) -> Path:
    """A 2-layer random LLaMA with a TempNet (hidden 32, tau in [0.05, 2]) whose tau varies by position,
    saved with the tokenizer as a `final/` directory of our trainers."""
    import torch
    from transformers import LlamaConfig

    from tempnet.integrations.hf import tempnet_model_from_config

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = tempnet_model_from_config(config, objective="tempnet_dro", rho=8.0, tau_min=0.05, tau_max=2.0,
                                      hidden_size=32)
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
        model.tempnet.proj[0].weight.mul_(20.0)
        model.tempnet.last.weight.normal_(0.0, 20.0)
    model.save_pretrained(path)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return path
