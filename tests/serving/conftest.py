"""The serving tests: vLLM with TempNet's plugin, on tiny random LLaMAs built here.

They need vLLM, which lives in its own environment (its torch and transformers pins differ from the project's):
`bash .ci/run` makes it (`.ci/serve_env.sh`) and runs these tests in it; the main suite skips them.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="needs vLLM: run the serving tests in the serving environment "
                                   "(bash .ci/serve_env.sh DIR; DIR/bin/python -m pytest tests/serving), see README 'Serving'")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from helpers import SP_VOCAB, train_llama_tokenizer  # noqa: E402

#: vLLM's CPU attention kernels refuse head size 16: 128 / 2 heads = 64.
LLAMA = dict(vocab_size=SP_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
#: The settings of our TempNet (hidden 32) and the engine options every serving test uses: an explicit KV cache
#: (64 MiB) rather than a fraction of the host's memory, which other processes may hold at the time.
TEMPNET = dict(objective="tempnet_dro", rho=8.0, tau_min=0.05, tau_max=2.0, hidden_size=32)
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 * 2**20, max_model_len=128, seed=0)
PROMPT = "how do you get water in the desert"


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    tok = train_llama_tokenizer(root)
    tok.save_pretrained(root / "hf")
    return tok


def tiny_tempnet_llama():
    """A random LLaMA with a TempNet whose tau varies by position (peaked logits, large TempNet weights)."""
    from transformers import LlamaConfig

    from tempnet.integrations.hf import tempnet_model_from_config

    torch.manual_seed(0)
    model = tempnet_model_from_config(LlamaConfig(**LLAMA), **TEMPNET)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.tempnet.proj[0].weight.mul_(50.0)
        model.tempnet.last.weight.normal_(0.0, 50.0)
    return model.eval()


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory, tokenizer):
    """A checkpoint as we save it (LlamaTempNetForCausalLM, model_type llama_tempnet, float32)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama-tempnet"
    tiny_tempnet_llama().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def released_dir(tmp_path_factory, tokenizer):
    """The same model in the layout of LLM-Opt/TempNet-LLaMA2-Chat-*: sharded fp16 safetensors with an index,
    model_type "llama", architectures ["LLaMA_TempNet"], no TempNet settings, the scaler 0-dim."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama-released"
    path.mkdir()
    state = {k: v.half().contiguous() for k, v in tiny_tempnet_llama().state_dict().items()}
    state["tempnet.scaler"] = state["tempnet.scaler"].reshape(())
    shards = {"model-00001-of-00002.safetensors": [k for k in state if not k.startswith(("tempnet.", "lm_head"))],
              "model-00002-of-00002.safetensors": [k for k in state if k.startswith(("tempnet.", "lm_head"))]}
    for name, keys in shards.items():
        save_file({k: state[k] for k in keys}, path / name, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
             "weight_map": {k: name for name, keys in shards.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = dict(LLAMA, architectures=["LLaMA_TempNet"], model_type="llama", torch_dtype="float16",
                  hidden_act="silu", rms_norm_eps=1e-6, transformers_version="4.31.0")
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(path)
    return path
