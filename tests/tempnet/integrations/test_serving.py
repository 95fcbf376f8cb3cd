"""What serving needs without vLLM itself: the per-request switch, TempNet's finite input, and `tempnet serve`'s
bad-input errors (one `error:` line, exit 2, before any vLLM starts). The serving tests proper are in tests/serving
(they need vLLM's own environment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import llama_config
from helpers import OFFLINE_ENV, REPO

from tempnet.integrations.export import export_tempnet
from tempnet.integrations.serving import ServingHead, finite_for_tempnet, request_wants_tempnet
from tempnet.modules import TempNet
from tempnet.integrations.head import TempNetConfig, save_tempnet_file


def test_the_per_request_switch():
    assert request_wants_tempnet(None) and request_wants_tempnet({"tempnet": True})
    assert not any(request_wants_tempnet({"tempnet": v}) for v in (False, 0, "false"))  # HTTP's false arrives as 0
    with pytest.raises(ValueError, match=r"unknown vllm_xargs key\(s\) \['tempnet_off'\]"):
        request_wants_tempnet({"tempnet_off": True})
    for bad in ("off", 2, [0]):
        with pytest.raises(ValueError, match="'tempnet' must be true or false"):
            request_wants_tempnet({"tempnet": bad})


def test_masked_tokens_reach_tempnet_as_the_lowest_finite_logit():
    scores = torch.tensor([[2.0, float("-inf"), -1.0, 5.0], [float("-inf")] * 4])
    assert finite_for_tempnet(scores).tolist() == [[2.0, -1.0, -1.0, 5.0], [0.0] * 4]


def test_serving_head_loads_ours_and_an_exported_file(tiny_llama, tiny_llama_dir, tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(3, tiny_llama.config.vocab_size) * 10
    with torch.no_grad():
        tau = tiny_llama.tempnet(logits)
    ours = ServingHead.load(tiny_llama_dir, tiny_llama.config.vocab_size, tiny_llama.config.tempnet)
    export_tempnet(tiny_llama, tmp_path / "head.safetensors")
    exported = ServingHead.load(tiny_llama_dir, tiny_llama.config.vocab_size, None, tmp_path / "head.safetensors")
    for serving in (ours, exported):
        tempered, got = serving.temper(logits)
        torch.testing.assert_close(got, tau)
        torch.testing.assert_close(tempered, logits / tau)


def _serve(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tempnet.cli", "serve", *map(str, argv), "--port", "1"], cwd=REPO,
                          env={**OFFLINE_ENV, **(env or {})}, capture_output=True, text=True, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_serve_refuses_a_checkpoint_without_tempnet(plain_dir):
    assert _error_line(_serve(plain_dir)) == (
        f"error: {plain_dir} holds no TempNet weights (tempnet.* tensors): serve a checkpoint trained with TempNet, "
        "or name an exported TempNet file (tempnet_file)")


def test_serve_refuses_a_tempnet_of_another_vocabulary(plain_dir, tmp_path):
    head_file = tmp_path / "other.safetensors"
    save_tempnet_file(TempNet(300, 16), TempNetConfig(hidden_size=16), 300, head_file)
    assert _error_line(_serve("--tempnet", head_file, plain_dir)) == (
        f"error: the TempNet in {head_file} was built for vocabulary size 300 but the served model {plain_dir} has "
        f"vocabulary size {llama_config().vocab_size}")


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_without_vllm_says_so(tiny_llama_dir):
    line = _error_line(_serve(tiny_llama_dir))
    assert line.startswith("error: TempNet's vLLM plugin needs vLLM's V1 logits-processor interface")
    assert "vLLM does not import (No module named 'vllm')" in line
    assert line.endswith("see tempnet/integrations/vllm/README.md for the environment that serves")


def test_serve_with_a_vllm_too_old_for_either_interface(tiny_llama_dir, tmp_path):
    stub = tmp_path / "old" / "vllm"  # a vLLM before its V1 logits-processor interface: no vllm.v1 package
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('__version__ = "0.6.0"\n')
    proc = _serve(tiny_llama_dir, env={"PYTHONPATH": f"{stub.parent}:{REPO}"})
    assert "vLLM 0.6.0 has no such interface" in _error_line(proc)


def test_serve_passes_every_flag_to_vllm_and_merges_hf_overrides():
    from tempnet.integrations.vllm import PROCESSOR, serve_argv

    flags = ["--port", "8001", "--dtype", "float16", "--enforce-eager"]
    assert serve_argv("ckpt", flags) == ["--model", "ckpt", "--logits-processors", PROCESSOR, *flags]
    argv = serve_argv("ckpt", ["--hf-overrides", '{"rope_theta": 1.0}', *flags], tempnet_file="t.safetensors")
    assert argv[:4] == ["--model", "ckpt", "--logits-processors", PROCESSOR] and argv[6:] == flags
    assert argv[4] == "--hf-overrides" and json.loads(argv[5]) == {"rope_theta": 1.0, "tempnet_file": "t.safetensors"}
