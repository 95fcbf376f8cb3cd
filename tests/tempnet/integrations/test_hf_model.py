"""The causal-LM-with-TempNet wrappers: construction, training forward, freezing, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaForCausalLM

from tempnet.integrations.hf import (GPT2TempNetForCausalLM, LlamaTempNetForCausalLM, TempNetConfig,
                                     tempnet_model_from_config, tempnet_model_from_pretrained)
from tempnet.modules import FixedTemperature, GlobalTemperature, TempNet

from conftest import VOCAB, gpt2_config, llama_config

HEADS = {"ce": FixedTemperature, "dro": GlobalTemperature, "tempnet_ce": TempNet, "tempnet_dro": TempNet}


def _robust_loss_float64(logits, labels, tau, rho):
    """mean over labels != -100 of tau * log((1/V) sum_k exp((z_k - z_y) / tau)) + tau * rho, in float64."""
    z, tau = logits.double(), tau.double().reshape(-1)
    total, count = 0.0, 0
    for i in range(z.shape[0]):
        if labels[i] == -100:
            continue
        d = (z[i] - z[i, labels[i]]) / tau[i]
        total += tau[i] * (torch.logsumexp(d, 0) - math.log(z.shape[1])) + tau[i] * rho
        count += 1
    return total / count


@pytest.mark.parametrize("objective", sorted(HEADS))
@pytest.mark.parametrize("make_config", [llama_config, gpt2_config,
                                         lambda: GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                                               num_attention_heads=2, intermediate_size=64)])
def test_from_config_builds_the_objectives_head(make_config, objective):
    base = make_config()
    model = tempnet_model_from_config(base, objective=objective, rho=7.0, tau=0.7, tau_min=0.05, tau_max=1.5,
                                      hidden_size=16)
    assert isinstance(model.tempnet, HEADS[objective])
    assert model.tempnet_config == TempNetConfig(objective=objective, rho=7.0, tau=0.7, tau_min=0.05, tau_max=1.5, hidden_size=16, dropout=0.5)
    assert model.config.vocab_size == base.vocab_size and model.config.model_type.endswith("_tempnet")
    if objective.startswith("tempnet"):  # the core's init survives HF's weight initialisation
        assert torch.equal(model.tempnet.last.weight, torch.ones_like(model.tempnet.last.weight))
        assert model.tempnet.scaler.item() == 0.0 and model.tempnet.proj[0].weight.shape == (16, base.vocab_size)
    x = torch.randint(0, base.vocab_size, (2, 7))
    out = model(input_ids=x, labels=x)
    assert out.tau.shape == (2, 7, 1) and out.tau.dtype == torch.float32
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.loss_terms) == {"loss", "ce", "tau_mean", "tau_min", "tau_max"}


def _set_fused(model, fused: bool):
    model.use_fused_loss(fused)
    assert model.tempnet_config.fused_loss is fused and model.config.tempnet["fused_loss"] is fused


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("objective", ["tempnet_dro", "tempnet_ce", "dro", "ce"])
def test_training_loss_equals_the_objective_on_the_base_logits(tiny_llama, objective, fused):
    model = tiny_llama
    if objective != "tempnet_dro":
        model.reset_tempnet(objective=objective, tau=0.8)
    _set_fused(model, fused)
    base = LlamaForCausalLM(llama_config()).eval()  # the same weights without the head
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("tempnet.") for k in unexpected)
    x = torch.randint(3, VOCAB, (2, 9))
    labels = x.clone()
    labels[0, :3] = -100  # e.g. a masked prompt
    out = model(input_ids=x, labels=labels)
    z = base(input_ids=x).logits[:, :-1].reshape(-1, VOCAB)  # [N, V]
    y = labels[:, 1:].reshape(-1)
    tau = model.tempnet(z)  # [N, 1]
    if objective in ("tempnet_dro", "dro"):
        expected = _robust_loss_float64(z, y, tau, rho=8.0)
    else:
        keep = y != -100
        expected = torch.nn.functional.cross_entropy(z[keep].double() / tau[keep].double(), y[keep])
    assert torch.allclose(out.loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.tau[:, :-1].reshape(-1, 1), tau, atol=1e-6)
    assert torch.allclose(out.tau, model.tempnet(base(input_ids=x).logits), atol=1e-6)  # the last position too
    if fused:  # no full-vocabulary tensor comes back
        assert out.logits is None
    else:
        assert torch.allclose(out.logits, base(input_ids=x).logits / out.tau, atol=1e-4)


def _neox_config():
    return GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)


def _loss_and_grads(model, x, labels, fused):
    _set_fused(model, fused)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=labels)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["tempnet_dro", "tempnet_ce", "dro", "ce"])
@pytest.mark.parametrize("make_config", [gpt2_config, llama_config, _neox_config], ids=["gpt2", "llama", "neox"])
def test_fused_loss_equals_the_full_logits_path(make_config, objective):
    """Loss, tau, logged terms and the gradient of every parameter, fused on vs off (GPT-2 ties its
    embeddings, LLaMA and NeoX do not)."""
    torch.manual_seed(0)
    model = tempnet_model_from_config(make_config(), objective=objective, tau=0.8, tau_min=0.05, tau_max=2.0,
                                      hidden_size=16).eval()  # eval: no dropout, so both paths see the same net
    with torch.no_grad():  # peaked logits and a tau that varies by position
        model.get_output_embeddings().weight.mul_(10.0)
        if objective.startswith("tempnet"):
            model.tempnet.proj[0].weight.mul_(20.0)
            model.tempnet.last.weight.normal_(0.0, 20.0)
    vocab = model.config.vocab_size
    x = torch.randint(3, vocab, (3, 11))
    labels = x.clone()
    labels[0, :4] = -100
    fused, got = _loss_and_grads(model, x, labels, True)
    full, want = _loss_and_grads(model, x, labels, False)
    assert fused.logits is None and full.logits.shape == (3, 11, vocab)
    assert torch.allclose(fused.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused.tau, full.tau, atol=1e-6) and fused.tau.shape == (3, 11, 1)
    assert fused.loss_terms.keys() == full.loss_terms.keys() == {"loss", "ce", "tau_mean", "tau_min", "tau_max"}
    for key in fused.loss_terms:
        assert torch.allclose(fused.loss_terms[key], full.loss_terms[key], rtol=1e-5, atol=1e-6), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got.keys() == want.keys() == trainable
    for name in want:
        scale = want[name].abs().max().item()
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale + 1e-8), name
    if objective.startswith("tempnet"):
        assert fused.tau.std() > 0.02  # per-position tau, so a position mix-up would show


def test_frozen_base_fused_keeps_no_activations_of_the_base(tiny_llama):
    """freeze_base(): the backbone runs without autograd, even where HF makes its input require grad."""
    model = tiny_llama.freeze_base()
    model.enable_input_require_grads()  # what PEFT / gradient checkpointing set up: embeddings output requires grad
    x = torch.randint(3, VOCAB, (2, 12))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=x, labels=x)
    # the backbone's activations are [B, L, ...] (and [B, heads, L, ...]); the fused op's are [B * L, ...]
    base_shaped = [tuple(t.shape) for t in saved if t.dim() >= 2 and t.shape[0] == 2 and 12 in t.shape[1:3]]
    assert not base_shaped, base_shaped
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("tempnet."))
    _set_fused(model, False)
    model.zero_grad(set_to_none=True)
    want = torch.autograd.grad(model(input_ids=x, labels=x).loss, list(model.tempnet.parameters()))
    _set_fused(model, True)
    got = torch.autograd.grad(model(input_ids=x, labels=x).loss, list(model.tempnet.parameters()))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5 * w.abs().max().item() + 1e-8)


def test_freeze_base_leaves_only_the_tempnet_trainable(tiny_llama):
    model = tiny_llama.train()
    x = torch.randint(3, VOCAB, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None and model.tempnet.proj[0].weight.grad is not None
    model.zero_grad(set_to_none=True)
    assert model.freeze_base() is model
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "tempnet." + n for n, _ in model.tempnet.named_parameters()}
    model(input_ids=x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if not n.startswith("tempnet."))
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("tempnet."))


def test_tempnet_reads_detached_logits(tiny_llama):
    """The head sends no gradient into the LM: its loss term alone leaves the base without gradient."""
    x = torch.randint(3, VOCAB, (1, 6))
    tiny_llama(input_ids=x).tau.sum().backward()
    assert all(p.grad is None for n, p in tiny_llama.named_parameters() if not n.startswith("tempnet."))


def _fused_options():
    """fused_loss false and, once the wrapper has that option (a fused loss kernel), true."""
    has = "fused_loss" in TempNetConfig.__dataclass_fields__
    return [None] if not has else [False, True]


@pytest.mark.parametrize("fused", _fused_options())
@pytest.mark.parametrize("objective", ["tempnet_dro", "tempnet_ce"])
def test_logits_gradient_is_the_one_with_tau_a_constant(tiny_llama, objective, fused):
    """The training loss sends gradient into the LM's logits only through z / tau, never through tau = TempNet(z):
    the logits' gradient equals the closed form (softmax(z / tau) - onehot(y)) [/ tau] / N with tau held fixed."""
    model = tiny_llama.train()
    if objective != "tempnet_dro" or fused is not None:
        model.reset_tempnet(objective=objective, **({} if fused is None else {"fused_loss": fused}))
        with torch.no_grad():
            model.tempnet.proj[0].weight.mul_(20.0)
            model.tempnet.last.weight.normal_(0.0, 20.0)
    model.tempnet.eval()  # no dropout in the head: tau below is the one the loss used
    captured = {}

    def keep(module, inputs, output):  # the final hidden states h; the logits are z = h W^T
        output.retain_grad()
        captured["h"] = output

    handle = model.model.norm.register_forward_hook(keep)
    try:
        x = torch.randint(3, VOCAB, (2, 9))
        labels = x.clone()
        labels[1, :4] = -100
        model(input_ids=x, labels=labels).loss.backward()
    finally:
        handle.remove()
    weight = model.lm_head.weight.detach().double()  # [V, d]
    h = captured["h"].detach()[:, :-1].reshape(-1, weight.shape[1]).double()  # [N, d]
    z = h @ weight.t()  # [N, V]
    y = labels[:, 1:].reshape(-1)
    tau = model.tempnet(z.float()).detach().double()  # [N, 1]
    assert tau.std() > 0.01
    valid = y != -100
    p = torch.softmax(z / tau, dim=-1)
    p[valid, y[valid]] -= 1.0
    expected = p * valid[:, None] / valid.sum()  # d loss / d z with tau held fixed
    if objective == "tempnet_ce":
        expected = expected / tau
    got = captured["h"].grad[:, :-1].reshape(-1, weight.shape[1]).double()
    # through z = h W^T (the fused path never materialises z, so the check is on h): d loss / d h = (d loss / d z) W
    assert torch.allclose(got, expected @ weight, rtol=1e-4, atol=1e-8)
    assert torch.all(captured["h"].grad[:, -1] == 0)  # the last position has no label


def test_save_load_round_trip(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model_type"] == "llama_tempnet"
    assert stored["tempnet"] == {"objective": "tempnet_dro", "rho": 8.0, "target_entropy": None, "tau": 1.0, "tau_min": 0.05,
                                 "tau_max": 2.0, "hidden_size": 32, "dropout": 0.5, "pooling": "centred",
                                 "fused_loss": True}
    x = torch.randint(3, VOCAB, (2, 8))
    for loaded in (LlamaTempNetForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path),
                   tempnet_model_from_pretrained(tmp_path)):
        assert type(loaded) is LlamaTempNetForCausalLM and not loaded.training
        assert loaded.tempnet_config == tiny_llama.tempnet_config
        assert torch.equal(loaded(input_ids=x).logits, tiny_llama(input_ids=x).logits)


def test_gpt2_round_trip_and_overrides(tmp_path):
    torch.manual_seed(1)
    model = tempnet_model_from_config(gpt2_config(), objective="dro", tau=0.5, tau_min=0.1, tau_max=1.0).eval()
    with torch.no_grad():
        model.tempnet.logit.fill_(0.3)
    model.save_pretrained(tmp_path)
    loaded = GPT2TempNetForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 300, (1, 5))
    assert loaded.tempnet.logit.item() == pytest.approx(0.3)
    assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)
    overridden = tempnet_model_from_pretrained(tmp_path, rho=3.0)  # settings only used by the loss
    assert overridden.tempnet_objective.rho == 3.0 and overridden.tempnet.logit.item() == pytest.approx(0.3)


def test_plain_base_checkpoint_needs_fresh_tempnet(tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no tempnet.* weights.*fresh_tempnet=True"):
        tempnet_model_from_pretrained(tmp_path)
    model = tempnet_model_from_pretrained(tmp_path, fresh_tempnet=True, objective="tempnet_dro", tau_max=1.5,
                                          hidden_size=24)
    assert model.tempnet.proj[0].weight.shape == (24, VOCAB) and model.tempnet.tau_max == 1.5
    assert torch.equal(model.tempnet.last.weight, torch.ones(1, 24))  # fresh: the core's init
    base = LlamaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert tempnet_model_from_pretrained(tmp_path, objective="ce").tempnet.tau == 1.0  # "ce" has no weights


def test_checkpoint_with_another_vocabulary_is_a_clear_error(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    other = tempnet_model_from_config(llama_config(vocab_size=400), hidden_size=32)
    # a TempNet trained for another vocabulary, attached to this checkpoint
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state.update({"tempnet." + k: v for k, v in other.tempnet.state_dict().items()})
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="vocabulary size 400 but the model's vocabulary size is 320"):
        tempnet_model_from_pretrained(tmp_path)
    model = tempnet_model_from_pretrained(tmp_path, fresh_tempnet=True)
    assert model.tempnet.proj[0].weight.shape == (32, VOCAB) and config["vocab_size"] == VOCAB
    assert not torch.equal(model.tempnet.proj[0].weight, other.tempnet.proj[0].weight[:, :VOCAB])


def test_checkpoint_with_another_tempnet_width_is_a_clear_error(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    expected = r"tempnet\.\S+ in .* has shape .* but objective 'tempnet_dro' with hidden_size=8 expects"
    with pytest.raises(ValueError, match=expected):
        tempnet_model_from_pretrained(tmp_path, hidden_size=8)
    model = tempnet_model_from_pretrained(tmp_path, hidden_size=8, fresh_tempnet=True)
    assert model.tempnet.proj[0].weight.shape == (8, VOCAB)
    assert torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight)


def test_half_precision_load_keeps_tempnet_in_float32(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    model = tempnet_model_from_pretrained(tmp_path, dtype=torch.float16)
    assert model.lm_head.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.tempnet.parameters())
    assert torch.equal(model.tempnet.proj[0].weight, tiny_llama.tempnet.proj[0].weight)


def test_base_model_methods_still_work(tiny_llama):
    model = tiny_llama.train()
    model.gradient_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    x = torch.randint(3, VOCAB, (1, 6))
    model(input_ids=x, labels=x).loss.backward()
    model.resize_token_embeddings(VOCAB + 8)
    assert model.get_output_embeddings().weight.shape[0] == VOCAB + 8


def test_public_names_resolve():
    import importlib

    import tempnet

    for name in tempnet.__all__:
        module = importlib.import_module(tempnet._LAZY[name])
        assert getattr(tempnet, name) is (module if name == "losses" else getattr(module, name)), name
    assert tempnet.LLaMA_TempNet is LlamaTempNetForCausalLM
    assert set(tempnet.__all__) <= set(dir(tempnet))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tempnet.nope  # noqa: B018
