"""What the serving tests share: tiny random LLaMAs with TempNet, the engine options, why they skip without vLLM.

They need vLLM, which lives in its own environment (its torch and transformers pins differ from the project's):
`bash .ci/run` makes it (`.ci/serve_env.sh`) and runs these tests in it; the main suite skips them.
"""

from __future__ import annotations

import torch

from helpers import SP_VOCAB  # noqa: F401  (the tests' vocabulary size)

#: Each serving test module starts with pytest.importorskip("vllm", reason=NEEDS_VLLM).
NEEDS_VLLM = ("needs vLLM: run the serving tests in the serving environment (bash .ci/serve_env.sh DIR; "
              "DIR/bin/python -m pytest tests/serving), see tempnet/integrations/vllm/README.md")

#: vLLM's CPU attention kernels refuse head size 16: 128 / 2 heads = 64.
LLAMA = dict(vocab_size=SP_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
#: The settings of our TempNet (hidden 32) and the engine options every serving test uses: an explicit KV cache
#: (64 MiB) rather than a fraction of the host's memory, which other processes may hold at the time.
TEMPNET = dict(objective="tempnet_dro", rho=8.0, tau_min=0.05, tau_max=2.0, hidden_size=32)
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 * 2**20, max_model_len=128, seed=0)
PROMPT = "how do you get water in the desert"


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
