"""Checkpoints: the authors' released layout, the README snippet, export/attach of a TempNet alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from tempnet.integrations.export import attach_tempnet, export_tempnet, load_tempnet_file
from tempnet.integrations.hf import LLaMA_TempNet, tempnet_model_from_config, tempnet_model_from_pretrained

from conftest import VOCAB, llama_config

HIDDEN = 256  # the released TempNets' width


def _released_tempnet_state(seed=0) -> dict[str, torch.Tensor]:
    """TempNet weights as the authors' code names and shapes them (scaler is [1]), fp16."""
    g = torch.Generator().manual_seed(seed)
    return {
        "tempnet.proj.0.weight": torch.randn(HIDDEN, VOCAB, generator=g) * 0.5,
        "tempnet.proj.0.bias": torch.randn(HIDDEN, generator=g) * 0.1,
        "tempnet.proj.3.weight": torch.randn(HIDDEN, HIDDEN, generator=g) * 0.3,
        "tempnet.proj.3.bias": torch.randn(HIDDEN, generator=g) * 0.1,
        "tempnet.scaler": torch.tensor([0.3]),
        "tempnet.last.weight": torch.randn(1, HIDDEN, generator=g) * 3.0,
        "tempnet.last.bias": torch.tensor([0.2]),
    }


def write_released_checkpoint(path, tokenizer, scaler_shape: tuple[int, ...] = (1,)):
    """A tiny checkpoint in the layout of LLM-Opt/TempNet-LLaMA2-Chat-*: a LlamaForCausalLM state dict plus
    fp16 tempnet.* weights, sharded safetensors with an index, model_type "llama", no TempNet settings.
    scaler_shape (1,) or () (the authors' Megatron export stores it 0-dim)."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config())
    with torch.no_grad():
        base.lm_head.weight.mul_(20.0)
    state = {k: v.half() for k, v in base.state_dict().items()}
    state.update({k: v.half() for k, v in _released_tempnet_state().items()})
    state["tempnet.scaler"] = state["tempnet.scaler"].reshape(scaler_shape)
    path.mkdir()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": [k for k in keys if not k.startswith(("tempnet.", "lm_head"))],
              "model-00002-of-00002.safetensors": [k for k in keys if k.startswith(("tempnet.", "lm_head"))]}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, path / name, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
             "weight_map": {k: name for name, names in shards.items() for k in names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {k: v for k, v in llama_config().to_dict().items() if k not in ("dtype", "transformers_version")}
    config.update(architectures=["LLaMA_TempNet"], model_type="llama", torch_dtype="float16",
                  transformers_version="4.31.0")
    (path / "config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "temperature": 0.6,
         "top_p": 0.9, "max_new_tokens": 8, "transformers_version": "4.31.0"}))
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def released_dir(tmp_path, tokenizer):
    """The released layout with a [1]-shaped scaler."""
    return write_released_checkpoint(tmp_path / "TempNet-LLaMA2-Chat-tiny", tokenizer)


@pytest.fixture
def released_0dim_dir(tmp_path, tokenizer):
    """The released layout as the authors' Megatron export writes it: `tempnet.scaler` 0-dim (shape [])."""
    return write_released_checkpoint(tmp_path / "TempNet-LLaMA2-Chat-tiny-0dim", tokenizer, scaler_shape=())


def _reference_tau(z: torch.Tensor) -> torch.Tensor:
    """The released TempNet in float64 from the paper's formula, tau range [0.01, 1.2]. z [N, V] -> [N]."""
    w = {k.removeprefix("tempnet."): v.half().double() for k, v in _released_tempnet_state().items()}
    z = z.double()
    x = z - z.max(dim=-1, keepdim=True).values
    x = x / x.norm(dim=-1, keepdim=True)
    h = torch.sigmoid(x @ w["proj.0.weight"].T + w["proj.0.bias"]) @ w["proj.3.weight"].T + w["proj.3.bias"]
    pool = torch.softmax(h / torch.exp(w["scaler"]), dim=-1)
    r = ((pool - 1.0 / HIDDEN) * h) @ w["last.weight"].T + w["last.bias"]
    return (1.2 - 0.01) * torch.sigmoid(r[:, 0]) + 0.01


def _base_logits(path, ids):
    base = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return base(input_ids=ids).logits[0]  # [L, V]


def test_released_layout_loads_with_its_tempnet(released_dir):
    model = LLaMA_TempNet.from_pretrained(released_dir, dtype=torch.float32)
    cfg = model.tempnet_config
    assert (cfg.tau_min, cfg.tau_max, cfg.hidden_size, cfg.objective) == (0.01, 1.2, HIDDEN, "tempnet_dro")
    assert model.tempnet.scaler.item() == pytest.approx(0.3, abs=1e-3)  # the [1]-shaped scaler was read
    ids = torch.randint(3, VOCAB, (1, 9))
    out = model(input_ids=ids)
    z = _base_logits(released_dir, ids)
    tau = _reference_tau(z)
    assert torch.allclose(out.tau[0, :, 0].double(), tau, atol=1e-4)
    assert torch.allclose(out.logits[0].double(), z.double() / tau[:, None], rtol=1e-3, atol=1e-3)
    assert tau.std() > 1e-3  # a tau per position: the comparison above is not of constants


def test_released_0dim_scaler_gives_the_same_tau(released_dir, released_0dim_dir):
    from safetensors import safe_open

    with safe_open(str(released_0dim_dir / "model-00002-of-00002.safetensors"), "pt") as f:
        assert tuple(f.get_slice("tempnet.scaler").get_shape()) == ()  # really the 0-dim layout
    model, info = LLaMA_TempNet.from_pretrained(released_0dim_dir, dtype=torch.float32, output_loading_info=True)
    one = LLaMA_TempNet.from_pretrained(released_dir, dtype=torch.float32)
    assert model.tempnet.scaler.shape == (1,) and info["mismatched_keys"] == []
    assert model.tempnet.scaler.item() == pytest.approx(0.3, abs=1e-3)  # read from the file, not the init 0
    ids = torch.randint(3, VOCAB, (2, 9))
    tau0, tau1 = model(input_ids=ids).tau, one(input_ids=ids).tau
    assert torch.equal(tau0, tau1)
    z = _base_logits(released_0dim_dir, ids[:1])
    assert torch.allclose(tau0[0, :, 0].double(), _reference_tau(z), atol=1e-4)

    auto = tempnet_model_from_pretrained(released_0dim_dir, dtype=torch.float32)  # the lm-eval loader's path
    assert torch.equal(auto(input_ids=ids).tau, tau1)


def test_released_0dim_scaler_exports(released_0dim_dir, tmp_path):
    export_tempnet(released_0dim_dir, tmp_path / "t.safetensors", dtype=torch.float16)
    head = load_tempnet_file(tmp_path / "t.safetensors").head
    assert head.scaler.shape == (1,) and head.scaler.item() == pytest.approx(0.3, abs=1e-3)


def test_authors_readme_snippet_runs(released_dir):
    import torch  # noqa: F401  (the snippet's missing import)
    from transformers import AutoTokenizer, GenerationConfig

    from tempnet import LLaMA_TempNet

    model_name = str(released_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_name, legacy=False)
    generation_config = GenerationConfig.from_pretrained(model_name)
    model = LLaMA_TempNet.from_pretrained(model_name, device_map="auto", torch_dtype=torch.float16)

    inputs = "How do you get water in the desert?"
    input_ids = tokenizer(inputs, return_tensors="pt").input_ids.to(model.device)  # any device instead of .cuda()

    torch.manual_seed(0)
    outputs = model.generate(input_ids, generation_config=generation_config)
    response = tokenizer.decode(outputs[0], skip_special_tokens=True)[len(inputs) - 1:].strip()
    assert isinstance(response, str) and outputs.shape[1] > input_ids.shape[1]
    assert model.lm_head.weight.dtype == torch.float16
    assert {p.dtype for p in model.tempnet.parameters()} == {torch.float32}


def test_released_checkpoint_round_trips_in_our_layout(released_dir, tmp_path):
    model = LLaMA_TempNet.from_pretrained(released_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path / "ours")
    stored = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert stored["model_type"] == "llama_tempnet" and stored["tempnet"]["tau_max"] == 1.2
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    ids = torch.randint(3, VOCAB, (2, 6))
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_export_and_attach_reproduce_the_logits(released_dir, tmp_path):
    exported = tmp_path / "tempnet.safetensors"
    export_tempnet(released_dir, exported, dtype=torch.float16)  # from the checkpoint, without loading the LLM
    assert exported.stat().st_size < 300_000
    head, cfg, vocab = load_tempnet_file(exported)
    assert vocab == VOCAB and cfg.tau_max == 1.2 and head.scaler.shape == (1,)

    plain = tmp_path / "plain-llama"
    LlamaForCausalLM.from_pretrained(released_dir, dtype=torch.float32).save_pretrained(plain)
    attached = attach_tempnet(plain, exported)
    released = LLaMA_TempNet.from_pretrained(released_dir, dtype=torch.float32)
    ids = torch.randint(3, VOCAB, (2, 7))
    assert torch.equal(attached(input_ids=ids).logits, released(input_ids=ids).logits)

    export_tempnet(attached, tmp_path / "again.safetensors")  # from a loaded model, float32
    head_again = load_tempnet_file(tmp_path / "again.safetensors").head
    for (name, a), b in zip(head.state_dict().items(), head_again.state_dict().values()):
        assert torch.equal(a, b), name


def test_attach_to_another_vocabulary_is_a_clear_error(tmp_path):
    model = tempnet_model_from_config(llama_config(), hidden_size=16)
    export_tempnet(model, tmp_path / "t.safetensors")
    LlamaForCausalLM(llama_config(vocab_size=400)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="vocabulary size 320 but .* has vocabulary size 400"):
        attach_tempnet(tmp_path / "other", tmp_path / "t.safetensors")


def test_global_temperature_exports_too(tmp_path):
    model = tempnet_model_from_config(llama_config(), objective="dro", tau=0.4)
    model.save_pretrained(tmp_path / "dro")
    export_tempnet(tmp_path / "dro", tmp_path / "dro.safetensors")
    head, cfg, _ = load_tempnet_file(tmp_path / "dro.safetensors")
    assert cfg.objective == "dro" and head(torch.zeros(1, VOCAB)).item() == pytest.approx(0.4, abs=1e-6)
    reloaded = tempnet_model_from_pretrained(tmp_path / "dro")
    assert reloaded.tempnet(torch.zeros(1, VOCAB)).item() == pytest.approx(0.4, abs=1e-6)
