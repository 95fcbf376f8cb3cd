"""Tiny random models (and a tokenizer trained on the spot) for the Hugging Face integration tests."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM  # noqa: E402

from helpers import SP_VOCAB as VOCAB  # noqa: E402
from helpers import train_llama_tokenizer  # noqa: E402


def llama_config(vocab_size: int = VOCAB) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)


def gpt2_config(vocab_size: int = 300) -> GPT2Config:
    return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=0,
                      eos_token_id=1, pad_token_id=1)


@pytest.fixture
def tiny_llama():
    """A 2-layer random LLaMA with a TempNet (hidden 32), in eval mode."""
    from tempnet.integrations.hf import tempnet_model_from_config

    torch.manual_seed(0)
    model = tempnet_model_from_config(llama_config(), objective="tempnet_dro", rho=8.0, tau_min=0.05, tau_max=2.0,
                                      hidden_size=32)
    with torch.no_grad():  # peaked logits and a TempNet whose tau varies (about 0.3 to 0.5) by position
        model.lm_head.weight.mul_(20.0)
        model.tempnet.proj[0].weight.mul_(20.0)
        model.tempnet.last.weight.normal_(0.0, 20.0)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A LLaMA tokenizer (tests/helpers.py's train_llama_tokenizer) trained here, saved HF-style."""
    root = tmp_path_factory.mktemp("tokenizer")
    train_llama_tokenizer(root).save_pretrained(root / "hf")
    return root / "hf"


@pytest.fixture
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def tiny_llama_dir(tiny_llama, tokenizer, tmp_path):
    """tiny_llama saved with the tokenizer, as a user's checkpoint directory."""
    path = tmp_path / "tiny-llama-tempnet"
    tiny_llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def plain_dir(tiny_llama, tokenizer, tmp_path):
    """The same LLaMA without TempNet, as a plain HF checkpoint."""
    path = tmp_path / "plain"
    base = LlamaForCausalLM(llama_config())
    base.load_state_dict({k: v for k, v in tiny_llama.state_dict().items() if not k.startswith("tempnet.")})
    base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
