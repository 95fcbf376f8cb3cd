"""TempNet in `vllm.LLM` (the V1 runner of vLLM's CPU backend): parity with our `generate`, per-request on/off,
the client's temperature, greedy rows, masked rows, a bad per-request key. One engine for the module."""

from __future__ import annotations

import pytest
import torch

from serving_models import NEEDS_VLLM, ENGINE, PROMPT, SP_VOCAB

pytest.importorskip("vllm", reason=NEEDS_VLLM)

CONTINUATION = "the cat sat on the mat"


@pytest.fixture(scope="module")
def llm(ours_dir):
    from vllm import LLM

    from tempnet.integrations.vllm import PROCESSOR

    # processed_logits: what each request returns as log-probabilities is the logits vLLM samples from (after
    # the processors and the temperature), for every token of the small vocabulary
    engine = LLM(model=str(ours_dir), logits_processors=[PROCESSOR], logprobs_mode="processed_logits",
                 max_logprobs=SP_VOCAB, **ENGINE)
    yield engine
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def hf_model(ours_dir):
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    return tempnet_model_from_pretrained(ours_dir, dtype=torch.float32).eval()


def _params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=1, logprobs=SP_VOCAB, **kwargs)


def _run(llm, prompts: list[list[int]], params: list) -> list[torch.Tensor]:
    """The processed logits [V] of the first sampled position of each request (one batch)."""
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    rows = []
    for out in outs:
        step = out.outputs[0].logprobs[0]
        assert len(step) == SP_VOCAB
        rows.append(torch.tensor([step[i].logprob for i in range(SP_VOCAB)], dtype=torch.float64))
    return rows


def _tau(untempered: torch.Tensor, tempered: torch.Tensor) -> float:
    """tau with tempered = untempered / tau (least squares over the finite entries)."""
    ok = torch.isfinite(untempered)
    z, s = untempered[ok], tempered[ok]
    return float(z @ z / (z @ s))


@pytest.fixture(scope="module")
def prefixes(tokenizer):
    prompt = tokenizer(PROMPT).input_ids
    continuation = tokenizer(CONTINUATION, add_special_tokens=False).input_ids
    return [prompt + continuation[:k] for k in range(len(continuation) + 1)]


def test_parity_with_generate_teacher_forced(llm, hf_model, prefixes):
    """Each prefix of a fixed continuation: vLLM's tau and tempered distribution equal `generate`'s (1e-5)."""
    on = _run(llm, prefixes, [_params(temperature=1.0) for _ in prefixes])
    off = _run(llm, prefixes, [_params(temperature=1.0, extra_args={"tempnet": False}) for _ in prefixes])
    taus = []
    for ids, tempered, untempered in zip(prefixes, on, off):
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, return_tau=True,
                                output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        hf_scores = out.scores[0][0].double()  # logits / tau, what generate picks from
        hf_tau = float(out["tau"][0, 0])
        torch.testing.assert_close(untempered, hf_scores * hf_tau, rtol=0, atol=1e-4)  # the same model's logits
        assert _tau(untempered, tempered) == pytest.approx(hf_tau, abs=1e-5)
        torch.testing.assert_close(tempered.softmax(-1), hf_scores.softmax(-1), rtol=0, atol=1e-5)
        taus.append(hf_tau)
    assert max(taus) - min(taus) > 0.05  # tau is personal here, so the check would see a wrong row


def test_temperature_multiplies_tau_and_greedy_keeps_the_argmax(llm, prefixes):
    ids = prefixes[2]
    plain, warm, greedy, off = _run(llm, [ids] * 4, [_params(temperature=1.0), _params(temperature=0.5),
                                                    _params(temperature=0.0),
                                                    _params(temperature=1.0, extra_args={"tempnet": False})])
    torch.testing.assert_close(warm * 0.5, plain, rtol=1e-6, atol=1e-5)  # z / (tau * T)
    torch.testing.assert_close(greedy, plain, rtol=1e-6, atol=1e-5)  # greedy rows are tempered too
    assert _tau(off, plain) != pytest.approx(1.0, abs=1e-3)
    assert int(greedy.argmax()) == int(off.argmax())


def test_masked_rows_stay_finite(llm, hf_model, prefixes):
    """Tokens vLLM masked (-inf) reach TempNet as the row's lowest finite logit; the rest is tempered by that tau."""
    from tempnet.integrations.serving import finite_for_tempnet

    ids, allowed = prefixes[1], list(range(4, 40))
    masked, off = _run(llm, [ids, ids], [_params(temperature=1.0, allowed_token_ids=allowed),
                                         _params(temperature=1.0, allowed_token_ids=allowed,
                                                 extra_args={"tempnet": False})])
    keep = torch.zeros(SP_VOCAB, dtype=torch.bool)
    keep[allowed] = True
    assert torch.isfinite(masked).nonzero()[:, 0].tolist() == allowed, (masked, off)
    assert torch.isneginf(masked[~keep]).all()
    with torch.no_grad():
        tau = float(hf_model.tempnet(finite_for_tempnet(off.float()[None]))[0, 0])
    torch.testing.assert_close(masked[keep], off[keep] / tau, rtol=1e-5, atol=1e-5)


def test_unknown_request_key_is_the_requests_error(llm, prefixes):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=r"unknown vllm_xargs key\(s\) \['tempnet_off'\]"):
        _run(llm, prefixes[:1], [_params(extra_args={"tempnet_off": True})])
    with pytest.raises(VLLMValidationError, match="'tempnet' must be true or false"):
        _run(llm, prefixes[:1], [_params(extra_args={"tempnet": "no"})])
