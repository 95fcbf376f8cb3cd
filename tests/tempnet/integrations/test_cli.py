"""The `tempnet` command end to end on tiny checkpoints made here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from tempnet.cli import main
from tempnet.integrations.hf import tempnet_model_from_pretrained

from conftest import llama_config

PROMPT = "how do you get water in the desert"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(capsys, *argv) -> list[dict]:
    assert main([*argv, "--json", "--max-new-tokens", "6"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_with_the_models_tempnet_prints_tau_and_plots(tiny_llama_dir, tokenizer, tmp_path, capsys):
    plot = tmp_path / "plots" / "tau.png"
    [result] = _run(capsys, "generate", str(tiny_llama_dir), "--prompt", PROMPT, "--plot", str(plot))
    assert result["method"] == "TempNet" and len(result["tau"]) == len(result["tokens"]) > 0
    assert plot.read_bytes()[:8] == PNG_MAGIC

    model = tempnet_model_from_pretrained(tiny_llama_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    sequences = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert result["token_ids"] == sequences[0, ids.shape[1]:].tolist()[:len(result["token_ids"])]
    expected_tau = model.sequence_tau(sequences, prompt_length=ids.shape[1])[0, :len(result["tau"])]
    assert torch.allclose(torch.tensor(result["tau"]), expected_tau, atol=1e-5)


def test_export_attach_and_processor_paths_agree(tiny_llama_dir, plain_dir, tmp_path, capsys):
    exported = tmp_path / "tempnet.safetensors"
    assert main(["export", str(tiny_llama_dir), str(exported)]) == 0
    assert main(["attach", str(plain_dir), str(exported), str(tmp_path / "attached")]) == 0
    capsys.readouterr()
    [own] = _run(capsys, "generate", str(tiny_llama_dir), "--prompt", PROMPT)
    [attached] = _run(capsys, "generate", str(tmp_path / "attached"), "--prompt", PROMPT)
    [as_processor] = _run(capsys, "generate", str(plain_dir), "--prompt", PROMPT, "--tempnet", str(exported))
    assert as_processor["method"] == "TempNet file"
    for other in (attached, as_processor):
        assert other["token_ids"] == own["token_ids"] and other["response"] == own["response"]
        assert torch.allclose(torch.tensor(other["tau"]), torch.tensor(own["tau"]), atol=1e-5)


def _entropies(model_dir, tokenizer, result) -> torch.Tensor:
    """float64 entropy of the plain model's next-token distribution before each generated token (a forward
    over the prompt and the tokens generated so far, no cache)."""
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([tokenizer(PROMPT).input_ids + result["token_ids"]])
    start = ids.shape[1] - len(result["token_ids"])
    with torch.no_grad():
        z = model(input_ids=ids).logits[0, start - 1:-1].double()
    p = torch.softmax(z, dim=-1)
    return -(p * torch.log(p)).sum(-1)


def test_generate_with_the_baselines(tiny_llama_dir, plain_dir, tokenizer, tmp_path, capsys):
    """Each baseline's printed taus are its formula of the plain model's logits at each generated token
    (a model with its own TempNet generates from the untempered logits under a baseline)."""
    [fixed] = _run(capsys, "generate", str(plain_dir), "--prompt", PROMPT, "--tau", "0.5", "--do-sample")
    assert fixed["tau"] == [0.5] * len(fixed["tokens"])
    [dyn] = _run(capsys, "generate", str(tiny_llama_dir), "--prompt", PROMPT, "--dynatemp", "0.2", "1.5",
                 "--plot", str(tmp_path / "dyn.png"))
    assert (tmp_path / "dyn.png").read_bytes()[:8] == PNG_MAGIC and len(dyn["tau"]) == len(dyn["token_ids"]) > 0
    expected = 0.2 + 1.3 * _entropies(plain_dir, tokenizer, dyn) / math.log(llama_config().vocab_size)
    assert torch.allclose(torch.tensor(dyn["tau"], dtype=torch.float64), expected, rtol=1e-4), (dyn["tau"], expected)
    [edt] = _run(capsys, "generate", str(plain_dir), "--prompt", PROMPT, "--edt", "1.0", "0.8", "1.0")
    expected = 1.0 * 0.8 ** (1.0 / _entropies(plain_dir, tokenizer, edt))
    assert torch.allclose(torch.tensor(edt["tau"], dtype=torch.float64), expected, rtol=1e-4), (edt["tau"], expected)
    [none] = _run(capsys, "generate", str(tiny_llama_dir), "--prompt", PROMPT, "--no-tempnet", "--do-sample")
    [plain] = _run(capsys, "generate", str(plain_dir), "--prompt", PROMPT, "--do-sample")
    assert none["method"] == plain["method"] == "tau = 1" and none["tau"] == [1.0] * len(none["tokens"])
    assert none["token_ids"] == plain["token_ids"]  # --no-tempnet samples from the untempered model


def test_prompt_file_and_text_output(tiny_llama_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\nthe cat sat\n")
    assert main(["generate", str(tiny_llama_dir), "--prompt-file", str(prompts), "--max-new-tokens", "3",
                 "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "=== prompt 2 (TempNet) ===" in out and out.count("--- tau per generated token ---") == 2
    assert (tmp_path / "p.png").is_file() and (tmp_path / "p-2.png").is_file()


@pytest.mark.slow
def test_console_script_runs(tiny_llama_dir, tmp_path):
    """The installed entry point (python -m for the same code when the script is not on PATH)."""
    cmd = [sys.executable, "-m", "tempnet.cli", "generate", str(tiny_llama_dir), "--prompt", PROMPT,
           "--max-new-tokens", "3", "--plot", str(tmp_path / "t.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tau per generated token" in done.stdout and (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC


def test_generate_export_attach_on_another_family(tokenizer, tmp_path, capsys):
    """`tempnet generate / export / attach` on a Qwen3 checkpoint (qwen3_tempnet): the attached and exported
    TempNet generate what the checkpoint's own TempNet does."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tempnet.integrations.hf import tempnet_model_from_config

    from conftest import VOCAB

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = tempnet_model_from_config(config, objective="tempnet_dro", rho=3.0, hidden_size=16)
    with torch.no_grad():
        model.tempnet.proj[0].weight.mul_(20.0)
        model.tempnet.last.weight.normal_(0.0, 20.0)
    own_dir, plain_dir, exported = tmp_path / "qwen-tempnet", tmp_path / "qwen", tmp_path / "tempnet.safetensors"
    model.save_pretrained(own_dir)
    base = Qwen3ForCausalLM(config)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tempnet.")})
    base.save_pretrained(plain_dir)
    for path in (own_dir, plain_dir):
        tokenizer.save_pretrained(path)
    assert main(["export", str(own_dir), str(exported)]) == 0
    assert main(["attach", str(plain_dir), str(exported), str(tmp_path / "attached")]) == 0
    capsys.readouterr()
    [own] = _run(capsys, "generate", str(own_dir), "--prompt", PROMPT)
    [attached] = _run(capsys, "generate", str(tmp_path / "attached"), "--prompt", PROMPT)
    [as_processor] = _run(capsys, "generate", str(plain_dir), "--prompt", PROMPT, "--tempnet", str(exported))
    assert own["method"] == "TempNet" and len(own["tau"]) == len(own["token_ids"]) > 0
    assert json.loads((tmp_path / "attached" / "config.json").read_text())["model_type"] == "qwen3_tempnet"
    for other in (attached, as_processor):
        assert other["token_ids"] == own["token_ids"]
        assert torch.allclose(torch.tensor(other["tau"]), torch.tensor(own["tau"]), atol=1e-5)
