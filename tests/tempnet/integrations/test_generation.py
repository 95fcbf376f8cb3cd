"""Generation with the TempNet wrapper and with the logits processors, against hand-written loops."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM, LogitsProcessorList, pipeline

from tempnet.integrations.decoding import (EDTLogitsProcessor, EntropyDynamicTemperatureLogitsProcessor,
                                           FixedTemperatureLogitsProcessor, TempNetLogitsProcessor)

from conftest import VOCAB, llama_config

STEPS = 6


def _base_of(model) -> LlamaForCausalLM:
    """The wrapper's LLaMA weights in a plain LlamaForCausalLM (no head)."""
    base = LlamaForCausalLM(llama_config()).eval()
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tempnet.")})
    base.generation_config.eos_token_id = None
    return base


def _no_eos(model):
    model.generation_config.eos_token_id = None  # fixed lengths: every test generates exactly STEPS tokens
    return model


@torch.no_grad()
def _manual_greedy(base, head, ids):
    """Greedy decoding by hand, no KV cache: z = base(all ids)[-1]; scores = z / head(z); argmax."""
    steps = []
    for _ in range(STEPS):
        z = base(input_ids=ids).logits[:, -1]  # [B, V]
        tau = head(z)  # [B, 1]
        steps.append((z / tau, tau[:, 0]))
        ids = torch.cat([ids, (z / tau).argmax(-1, keepdim=True)], dim=1)
    return ids, steps


def test_sampler_sees_base_logits_over_tempnet_at_every_step(tiny_llama):
    model, base = _no_eos(tiny_llama), _base_of(tiny_llama)
    prompt = torch.randint(3, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=STEPS, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, return_tau=True)  # KV cache on (the default)
    expected_ids, steps = _manual_greedy(base, model.tempnet, prompt)
    assert torch.equal(out.sequences, expected_ids)  # greedy output equals the hand-written loop
    for score, (manual, tau) in zip(out.scores, steps, strict=True):
        assert torch.allclose(score, manual, rtol=1e-4, atol=1e-4)
    taus = torch.stack([tau for _, tau in steps], dim=1)  # [B, STEPS]
    assert torch.allclose(out["tau"], taus, atol=1e-5)
    assert taus.std() > 1e-3  # the temperatures really differ between steps


def test_left_padded_batch_equals_one_by_one(tiny_llama):
    model = _no_eos(tiny_llama)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (3, 7, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # pad id 0, on the left
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, return_tau=True,
                           output_scores=True)
    for i, p in enumerate(prompts):
        single = model.generate(p[None], max_new_tokens=STEPS, do_sample=False, return_tau=True, output_scores=True)
        assert torch.equal(batch.sequences[i, width:], single.sequences[0, len(p):])
        assert torch.allclose(batch["tau"][i], single["tau"][0], atol=1e-5)
        for b, s in zip(batch.scores, single.scores):
            assert torch.allclose(b[i], s[0], rtol=1e-4, atol=1e-4)


def test_tau_of_several_sampled_sequences_per_left_padded_prompt(tiny_llama):
    """num_return_sequences = 3 of two left-padded prompts of different lengths: returned row r continues prompt
    r // 3, and its tau at step j is the head's tau at the last position of that row's own unpadded prefix."""
    model = _no_eos(tiny_llama)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (3, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # pad id 0, on the left
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=True, top_k=0,
                         num_return_sequences=3, return_tau=True)
    assert out["tau"].shape == (6, STEPS)
    assert len({tuple(row.tolist()) for row in out.sequences[:, width:]}) > 1  # the samples differ
    with torch.no_grad():
        by_prefix = torch.tensor([[model(input_ids=torch.cat([prompts[r // 3], row[width:width + j]])[None],
                                         use_cache=False).tau[0, -1, 0].item() for j in range(STEPS)]
                                  for r, row in enumerate(out.sequences)])
    assert by_prefix.std() > 1e-3 and torch.allclose(out["tau"], by_prefix, atol=1e-5)


def test_sampling_with_the_processor_equals_the_wrapper(tiny_llama):
    """A plain model + TempNetLogitsProcessor(tempnet) samples exactly what the wrapper samples."""
    model, base = _no_eos(tiny_llama), _base_of(tiny_llama)
    prompt = torch.randint(3, VOCAB, (3, 4))
    kwargs = dict(max_new_tokens=STEPS, do_sample=True, top_k=0, top_p=0.9, output_scores=True,
                  return_dict_in_generate=True)
    torch.manual_seed(123)
    wrapped = model.generate(prompt, **kwargs)
    torch.manual_seed(123)
    processor = TempNetLogitsProcessor(model.tempnet, record=True)
    plain = base.generate(prompt, logits_processor=LogitsProcessorList([processor]), **kwargs)
    assert torch.equal(wrapped.sequences, plain.sequences)
    for a, b in zip(wrapped.scores, plain.scores):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert len(processor.history) == STEPS and processor.history[0].shape == (3,)
    torch.manual_seed(123)
    untempered = base.generate(prompt, **kwargs)
    assert not torch.equal(untempered.sequences, plain.sequences)  # TempNet changes what is sampled


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_and_top_k_run_with_and_without_cache(tiny_llama, use_cache):
    model = _no_eos(tiny_llama)
    prompt = torch.randint(3, VOCAB, (2, 4))
    beams = model.generate(prompt, max_new_tokens=STEPS, num_beams=3, do_sample=False, use_cache=use_cache)
    reference = model.generate(prompt, max_new_tokens=STEPS, num_beams=3, do_sample=False, use_cache=not use_cache)
    assert torch.equal(beams, reference) and beams.shape == (2, 4 + STEPS)
    mask = torch.ones_like(prompt)
    two = model.generate(prompt, attention_mask=mask, max_new_tokens=STEPS, num_beams=3, num_return_sequences=2,
                         use_cache=use_cache, return_tau=True)
    assert two["tau"].shape == (4, STEPS) and torch.equal(two.sequences[::2], beams)
    # tau of each generated token, independently: the head's tau at the last position of the prefix before it
    prompt_len = prompt.shape[1]
    with torch.no_grad():
        by_prefix = torch.tensor([[model(input_ids=row[None, :prompt_len + j], use_cache=False).tau[0, -1, 0].item()
                                   for j in range(STEPS)] for row in two.sequences])
    assert by_prefix.std() > 1e-3 and torch.allclose(two["tau"], by_prefix, atol=1e-5)
    torch.manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=STEPS, do_sample=True, top_k=5, use_cache=use_cache)
    assert sampled.shape == (2, 4 + STEPS)


def test_text_generation_pipeline(tiny_llama, tokenizer):
    model = _no_eos(tiny_llama)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "how do you get water in the desert"
    result = generator(text, max_new_tokens=STEPS, do_sample=False)[0]["generated_text"]
    ids = tokenizer(text, return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=STEPS, do_sample=False)[0], skip_special_tokens=True)
    assert result == expected and result.startswith(text)


def test_processor_handles_masked_tokens(tiny_llama):
    scores = torch.randn(2, VOCAB) * 5
    scores[:, 2] = -math.inf  # e.g. EOS masked by min_new_tokens
    processor = TempNetLogitsProcessor(tiny_llama.tempnet)
    out = processor(None, scores)
    floor = scores[:, 3:].min(dim=-1, keepdim=True).values.minimum(scores[:, :2].min(dim=-1, keepdim=True).values)
    shown = torch.where(torch.isinf(scores), floor, scores)
    tau = tiny_llama.tempnet(shown)
    assert torch.isneginf(out[:, 2]).all() and torch.isfinite(out[:, 3:]).all()
    assert torch.allclose(out[:, 3:], scores[:, 3:] / tau, atol=1e-6)


def _entropy_float64(scores):
    p = torch.softmax(scores.double(), dim=-1)
    return -(p * torch.log(p.clamp(min=1e-300))).sum(-1)


def test_baseline_processors_follow_their_formulas():
    torch.manual_seed(0)
    scores = torch.randn(4, 50) * torch.tensor([[0.1], [1.0], [3.0], [10.0]])
    scores[1, :10] = -math.inf  # 40 candidates in row 1
    n = torch.tensor([50, 40, 50, 50], dtype=torch.float64)
    h = _entropy_float64(scores)

    fixed = FixedTemperatureLogitsProcessor(0.7)
    assert torch.allclose(fixed(None, scores.clone())[:, 10:], scores[:, 10:] / 0.7)

    dyn = EntropyDynamicTemperatureLogitsProcessor.from_range(1.0, 0.5, exponent=2.0, record=True)
    assert (dyn.t_min, dyn.t_max) == (0.5, 1.5)
    expected_t = 0.5 + 1.0 * (h / torch.log(n)) ** 2.0
    out = dyn(None, scores.clone())
    assert torch.allclose(dyn.history[0].double(), expected_t, atol=1e-5)
    assert torch.allclose(out[:, 10:].double(), scores[:, 10:].double() / expected_t[:, None], rtol=1e-5)
    assert expected_t[3] < expected_t[0]  # peaked scores (low entropy) get the lower temperature

    edt = EDTLogitsProcessor(t0=0.9, n=0.8, theta=1.5, record=True)
    edt(None, scores.clone())
    assert torch.allclose(edt.history[0].double(), (0.9 * 0.8 ** (1.5 / h)).clamp(min=1e-4), rtol=1e-5)

    one = torch.full((1, 50), -math.inf)
    one[0, 7] = 1.0
    assert torch.equal(dyn(None, one.clone()), one)  # a single candidate is left alone


def test_baseline_processors_in_generate(tiny_llama):
    """Inside generate, each step's recorded temperature is the formula of the base model's logits at that
    step (recomputed here in float64 from a forward over the generated prefix, no cache)."""
    base = _base_of(tiny_llama)
    prompt = torch.randint(3, VOCAB, (2, 4))
    formulas = {"fixed": lambda h: torch.full_like(h, 0.5), "dynatemp": lambda h: 0.2 + 1.0 * h / math.log(VOCAB),
                "edt": lambda h: 1.0 * 0.8 ** (1.0 / h)}
    for name, processor in (("fixed", FixedTemperatureLogitsProcessor(0.5, record=True)),
                            ("dynatemp", EntropyDynamicTemperatureLogitsProcessor(0.2, 1.2, record=True)),
                            ("edt", EDTLogitsProcessor(1.0, 0.8, 1.0, record=True))):
        torch.manual_seed(0)
        out = base.generate(prompt, max_new_tokens=STEPS, do_sample=True, top_k=0,
                            logits_processor=LogitsProcessorList([processor]))
        assert out.shape == (2, 4 + STEPS) and len(processor.history) == STEPS
        for k, recorded in enumerate(processor.history):
            with torch.no_grad():
                z = base(input_ids=out[:, :4 + k]).logits[:, -1]
            expected = formulas[name](_entropy_float64(z))
            assert torch.allclose(recorded.double().reshape(-1), expected, rtol=1e-4), (name, k)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_other_architectures_generate_with_tempnet(arch):
    from transformers import GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from conftest import gpt2_config
    from tempnet.integrations.hf import tempnet_model_from_config

    config = gpt2_config() if arch == "gpt2" else GPTNeoXConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = _no_eos(tempnet_model_from_config(config, hidden_size=16).eval())
    base = (GPT2LMHeadModel if arch == "gpt2" else GPTNeoXForCausalLM)(config).eval()
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tempnet.")})
    prompt = torch.randint(2, 300, (2, 4))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ids = prompt
    for score in out.scores:  # each step: the base model's logits (no cache) over TempNet's tau
        with torch.no_grad():
            z = base(input_ids=ids).logits[:, -1]
        assert torch.allclose(score, z / model.tempnet(z), rtol=1e-4, atol=1e-4)
        ids = torch.cat([ids, score.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, ids)
