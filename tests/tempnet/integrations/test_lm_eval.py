"""lm-evaluation-harness runs a causal LM with its TempNet in place, on local tasks (no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from tempnet.integrations.lm_eval import TempNetLM  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from helpers import lm_eval_by_hand, local_tasks  # noqa: E402
from test_checkpoints import write_released_checkpoint  # noqa: E402

REQUESTS = [("the cat sat on", " the mat"), ("how do you get", " water in the desert"), ("find", " shade")]


def _manual_loglikelihood(model, tokenizer, context: str, continuation: str, divide_by_tau: bool) -> float:
    ctx = tokenizer(context)["input_ids"]
    full = tokenizer(context + continuation)["input_ids"]
    n_cont = len(full) - len(ctx)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([full]))
    logits = out.logits[0].double()
    if not divide_by_tau:
        logits = logits * out.tau[0].double()  # undo the division: the base model's logits
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[i - 1, full[i]].item() for i in range(len(full) - n_cont, len(full)))


def test_loglikelihood_uses_tempnet(tiny_llama_dir, tokenizer):
    lm = TempNetLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=2)
    context, continuation = "the cat sat on", " the mat"
    (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    with_tau = _manual_loglikelihood(lm.model, tokenizer, context, continuation, divide_by_tau=True)
    without = _manual_loglikelihood(lm.model, tokenizer, context, continuation, divide_by_tau=False)
    assert got == pytest.approx(with_tau, rel=1e-4)
    assert abs(with_tau - without) > 1e-2  # TempNet changes the scores: it really is in place


@pytest.fixture(params=["ours", "released", "released_0dim"])
def checkpoint(request, tmp_path, tokenizer):
    """(path, tau range): our own layout (tiny_llama saved) or the authors' released layout (scaler [1] or [])."""
    if request.param == "ours":
        path = request.getfixturevalue("tiny_llama_dir")
        stored = json.loads((path / "config.json").read_text())["tempnet"]
        return path, (stored["tau_min"], stored["tau_max"])
    shape = () if request.param == "released_0dim" else (1,)
    return write_released_checkpoint(tmp_path / request.param, tokenizer, scaler_shape=shape), (0.01, 1.2)


def _loglikelihoods(lm) -> list[float]:
    return [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)])]


def _independent_loglikelihoods(path, tokenizer, tau_range) -> tuple[list[float], list[float]]:
    """(with TempNet, raw) log-likelihoods of REQUESTS in float64: the base model loaded on its own, the TempNet
    weights read from the checkpoint's files and applied by the paper's formula (no tempnet code involved)."""
    from safetensors import safe_open

    w = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            w.update({k.removeprefix("tempnet."): f.get_tensor(k).double() for k in f.keys() if k.startswith("tempnet.")})
    assert set(w) == {"proj.0.weight", "proj.0.bias", "proj.3.weight", "proj.3.bias", "scaler", "last.weight",
                      "last.bias"}
    base = LlamaForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    lo, hi = tau_range
    hidden = w["proj.0.weight"].shape[0]
    with_tau, raw = [], []
    for context, continuation in REQUESTS:
        ctx, full = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
        with torch.no_grad():
            z = base(input_ids=torch.tensor([full])).logits[0]  # [L, V]
        x = z - z.max(dim=-1, keepdim=True).values
        x = x / x.norm(dim=-1, keepdim=True)
        h = torch.sigmoid(x @ w["proj.0.weight"].T + w["proj.0.bias"]) @ w["proj.3.weight"].T + w["proj.3.bias"]
        pool = torch.softmax(h / torch.exp(w["scaler"].reshape(())), dim=-1)
        r = ((pool - 1.0 / hidden) * h) @ w["last.weight"].T + w["last.bias"]  # [L, 1]
        tau = (hi - lo) * torch.sigmoid(r) + lo
        for logits, out in ((z / tau, with_tau), (z, raw)):
            logp = torch.log_softmax(logits, dim=-1)
            out.append(sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full))))
    return with_tau, raw


def test_apply_tempnet_is_logits_over_the_checkpoints_tau(checkpoint, tokenizer):
    path, tau_range = checkpoint
    want, want_raw = _independent_loglikelihoods(path, tokenizer, tau_range)
    got = _loglikelihoods(TempNetLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=2))
    got_raw = _loglikelihoods(TempNetLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=2,
                                        apply_tempnet=False))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert got_raw == pytest.approx(want_raw, rel=1e-4, abs=1e-4)
    assert min(abs(a - b) for a, b in zip(want, want_raw)) > 0.05  # TempNet really changes every score


def test_apply_tempnet_false_equals_model_hf(checkpoint, tokenizer):
    """`--model tempnet` with apply_tempnet=false gives exactly what `--model hf` gives on the base model."""
    path, _ = checkpoint
    if path.name == "tiny-llama-tempnet":  # our layout: `--model hf` would load our registered wrapper class
        hf = HFLM(pretrained=LlamaForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer=tokenizer,
                  device="cpu", batch_size=2)
    else:  # the released layout is a plain "llama" checkpoint: `--model hf` loads it as the base model
        hf = HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=2)
    raw = TempNetLM.create_from_arg_string(f"pretrained={path},dtype=float32,apply_tempnet=false",
                                           {"device": "cpu", "batch_size": 2})
    assert raw.apply_tempnet is False
    assert _loglikelihoods(raw) == _loglikelihoods(hf)
    rolling = [Instance("loglikelihood_rolling", {}, ("the cat sat on the mat and the dog sat in the sun",), 0)]
    assert raw.loglikelihood_rolling(rolling) == hf.loglikelihood_rolling(rolling)


def test_apply_tempnet_generation_and_bad_value(tiny_llama_dir, tokenizer):
    raw = TempNetLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", apply_tempnet="False")
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("the cat sat")["input_ids"]] * 4)

    def sample(generate, **kwargs):  # sampling (greedy ignores any temperature), same seed
        torch.manual_seed(0)
        return generate(ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, **kwargs)[:, ids.shape[1]:]

    got = sample(raw._model_generate, max_length=ids.shape[1] + 8, stop=[])
    assert torch.equal(got, sample(base.generate, max_new_tokens=8, pad_token_id=0))  # the raw logits
    assert type(raw.model.tempnet).__name__ == "TempNet"  # the head is back after generation
    with_tau = TempNetLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32")
    assert not torch.equal(sample(with_tau._model_generate, max_length=ids.shape[1] + 8, stop=[]), got)
    with pytest.raises(ValueError, match="apply_tempnet must be true or false"):
        TempNetLM(pretrained=str(tiny_llama_dir), device="cpu", apply_tempnet="maybe")
    with pytest.raises(ValueError, match="needs a model with a temperature head"):
        TempNetLM(pretrained=base, tokenizer=tokenizer, device="cpu")


def test_simple_evaluate_on_local_tasks(tiny_llama_dir, tmp_path):
    tasks = local_tasks(tmp_path)
    docs = [json.loads(line) for line in (tmp_path / "mc.jsonl").read_text().splitlines()]
    results = simple_evaluate(
        model="tempnet", model_args=f"pretrained={tiny_llama_dir},dtype=float32", tasks=["toy_mc", "toy_ppl"],
        device="cpu", batch_size=2, task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0)["results"]
    # the same numbers by hand from the model with its TempNet
    from transformers import AutoTokenizer

    from tempnet.integrations.hf import tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(tiny_llama_dir).eval()
    lines = (tmp_path / "ppl.txt").read_text().splitlines()
    acc, ppl = lm_eval_by_hand(model, AutoTokenizer.from_pretrained(tiny_llama_dir), docs, lines)
    assert results["toy_mc"]["acc,none"] == pytest.approx(acc)
    assert results["toy_ppl"]["word_perplexity,none"] == pytest.approx(ppl, rel=1e-4)


def test_simple_evaluate_on_a_qwen_model(tokenizer, tmp_path):
    """`--model tempnet` on another family (Qwen3, saved as qwen3_tempnet): the scores are the model's with its TempNet."""
    from transformers import AutoTokenizer, Qwen3Config

    from tempnet.integrations.hf import Qwen3TempNetForCausalLM, tempnet_model_from_config, tempnet_model_from_pretrained

    from conftest import VOCAB

    torch.manual_seed(0)
    model = tempnet_model_from_config(
        Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0), objective="tempnet_dro", rho=3.0, hidden_size=16)
    with torch.no_grad():  # a tau that varies, far from 1
        model.tempnet.proj[0].weight.mul_(20.0)
        model.tempnet.last.weight.normal_(0.0, 20.0)
    path = tmp_path / "qwen"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tasks = local_tasks(tmp_path)
    docs = [json.loads(line) for line in (tmp_path / "mc.jsonl").read_text().splitlines()]
    results = simple_evaluate(
        model="tempnet", model_args=f"pretrained={path},dtype=float32", tasks=["toy_mc", "toy_ppl"], device="cpu",
        batch_size=2, task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0)["results"]
    loaded = tempnet_model_from_pretrained(path).eval()
    assert type(loaded) is Qwen3TempNetForCausalLM
    lines = (tmp_path / "ppl.txt").read_text().splitlines()
    acc, ppl = lm_eval_by_hand(loaded, AutoTokenizer.from_pretrained(path), docs, lines)
    _, raw_ppl = lm_eval_by_hand(loaded, AutoTokenizer.from_pretrained(path), docs, lines, apply_tempnet=False)
    assert results["toy_mc"]["acc,none"] == pytest.approx(acc)
    assert results["toy_ppl"]["word_perplexity,none"] == pytest.approx(ppl, rel=1e-4)
    assert abs(ppl - raw_ppl) > 1e-3 * ppl  # TempNet really changes the score
