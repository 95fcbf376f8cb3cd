"""Fixtures of the serving tests: a tokenizer and a tiny LLaMA with TempNet in our and the released layout."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from helpers import train_llama_tokenizer
from serving_models import LLAMA, tiny_tempnet_llama


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    tok = train_llama_tokenizer(root)
    tok.save_pretrained(root / "hf")
    return tok


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
