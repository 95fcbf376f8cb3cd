"""scripts/bench_serving.py at a tiny size: a plain LLaMA with an exported TempNet (`tempnet export`), both
engines in one run, the numbers in its JSON. Its speed is reported, never asserted."""

from __future__ import annotations

import json
import sys

import pytest

from serving_models import NEEDS_VLLM, ENGINE, LLAMA, tiny_tempnet_llama
from helpers import REPO, run

pytest.importorskip("vllm", reason=NEEDS_VLLM)


def test_bench_serving_runs_both_engines(ours_dir, tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    plain = tmp_path / "plain"  # the same LLaMA as a plain checkpoint, without tempnet.* tensors
    base = LlamaForCausalLM(LlamaConfig(**LLAMA))
    base.load_state_dict({k: v for k, v in tiny_tempnet_llama().state_dict().items() if not k.startswith("tempnet.")})
    base.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    head = tmp_path / "tempnet.safetensors"
    run([sys.executable, "-m", "tempnet.cli", "export", ours_dir, head])
    out = tmp_path / "bench" / "serving.json"
    proc = run([sys.executable, REPO / "scripts" / "bench_serving.py", "--model", plain, "--tempnet", head,
                "--prompts", "4", "--max-tokens", "8", "--repeats", "2", "--dtype", ENGINE["dtype"],
                "--max-model-len", "64", "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]),
                "--enforce-eager", "--json", out], timeout=900, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["tempnet"] == str(head)
    assert result["baseline"]["tokens"] == result["tempnet_plugin"]["tokens"] == 4 * 8
    rounds = result["round_ratios"]
    assert len(rounds) == 2 and min(rounds) <= result["ratio"] <= max(rounds)
    assert result["tempnet_macs_per_token"] == 320 * 32 + 32 * 32 + 32  # V x M + M x M + M
    assert result["model_macs_per_token"] == 2 * (2 * 128 * 128 * 2 + 3 * 128 * 256) + 128 * 320
    assert 0 < result["ratio_bound"] < 1
    assert proc.stdout.splitlines()[-1].startswith(f"ratio {result['ratio']:.3f} (median of 2 rounds); FLOP bound")
