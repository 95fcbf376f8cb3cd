"""Both of vLLM's logits-processor interfaces, called as vLLM calls them but without an engine: Model Runner V2
(GPU only, so never run end to end here) with a constructed LogitsContext, and the V1 runner's batch updates
(moves and swaps happen when requests finish in a running engine)."""

from __future__ import annotations

import pytest
import torch

from serving_models import NEEDS_VLLM, SP_VOCAB

pytest.importorskip("vllm", reason=NEEDS_VLLM)

V2 = pytest.importorskip("vllm.v1.worker.gpu.sample.logits_processor", reason="a vLLM before Model Runner V2")


@pytest.fixture(scope="module")
def vllm_config(ours_dir):
    from vllm.config import ModelConfig, VllmConfig
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # what vLLM does first in each process: our model_type becomes known
    return VllmConfig(model_config=ModelConfig(model=str(ours_dir), dtype="float32"))


@pytest.fixture(scope="module")
def head(ours_dir):
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    return tempnet_model_from_pretrained(ours_dir, dtype=torch.float32).tempnet.eval()


def _params(**extra):
    from vllm import SamplingParams

    return SamplingParams(extra_args=extra or None)


def _expected(head, rows: torch.Tensor) -> torch.Tensor:
    """rows / tau, tau from the rows with masked (-inf) entries shown as the row's lowest finite logit."""
    finite = torch.isfinite(rows)
    floor = rows.masked_fill(~finite, float("inf")).amin(-1, keepdim=True)
    with torch.no_grad():
        return rows / head(torch.where(finite, rows, floor))


def test_model_runner_v2_rows_follow_the_expanded_mapping(vllm_config, head):
    from tempnet.integrations.vllm.processors import TempNetLogitsProcessor

    state = V2.LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=4, vocab_size=SP_VOCAB,
                                      all_token_ids=None, prompt_len=None, prefill_len=None, total_len=None)
    proc = TempNetLogitsProcessor(vllm_config, state)
    assert isinstance(proc, V2.LogitsProcessor) and proc.v2
    with pytest.raises(ValueError, match="unknown vllm_xargs"):
        type(proc).validate_params(_params(temprature=0.5))
    assert proc.add_request(0, _params()) and not proc.add_request(1, _params(tempnet=False))
    assert proc.add_request(3, _params(tempnet=True))
    proc.apply_staged_writes()

    def context(slots: list[int]) -> V2.LogitsContext:
        mapping = torch.tensor(slots)
        unique = sorted(set(slots), key=slots.index)
        return V2.LogitsContext(expanded_idx_mapping=mapping, idx_mapping=torch.tensor(unique),
                                idx_mapping_np=torch.tensor(unique).numpy(), expanded_local_pos=torch.zeros_like(mapping),
                                input_ids=torch.zeros_like(mapping), pos=torch.zeros_like(mapping),
                                seq_lens_upper_bound_np=torch.ones(len(unique), dtype=torch.long).numpy())

    torch.manual_seed(0)
    logits = torch.randn(4, SP_VOCAB) * 10
    logits[0, :7] = float("-inf")  # masked by grammar / bad words before the processor
    out = proc.apply(logits.clone(), context([3, 1, 0, 3]))  # slot 3 owns two rows (a draft token)
    torch.testing.assert_close(out[1], logits[1])  # slot 1 opted out
    torch.testing.assert_close(out[[0, 2, 3]], _expected(head, logits[[0, 2, 3]]), rtol=1e-6, atol=1e-6)
    assert torch.isneginf(out[0, :7]).all() and torch.isfinite(out[0, 7:]).all()

    # a recycled slot is overwritten by the next request's choice; a step without a tempered row is untouched
    assert not proc.add_request(0, _params(tempnet=False)) and not proc.add_request(3, _params(tempnet=0))
    proc.apply_staged_writes()
    rows = logits[1:].clone()
    assert proc.apply(rows, context([3, 1, 0])) is rows


def test_v1_rows_follow_batch_updates(vllm_config, head):
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from tempnet.integrations.vllm.processors import TempNetLogitsProcessor

    proc = TempNetLogitsProcessor(vllm_config, torch.device("cpu"), False)
    assert not proc.v2 and not proc.is_argmax_invariant()  # argmax-invariant ones run after vLLM's temperature
    torch.manual_seed(1)
    logits = torch.randn(3, SP_VOCAB) * 10

    def step(update: BatchUpdate | None, size: int) -> list[bool]:
        """Which of the first `size` rows the processor tempers after `update`."""
        proc.update_state(update)
        out = proc.apply(logits[:size].clone())
        return [not torch.equal(out[i], logits[i]) for i in range(size)]

    on, off = _params(), _params(tempnet=False)
    assert step(BatchUpdate(3, [], [(0, on, [1], []), (1, off, [1], []), (2, on, [1], [])], []), 3) == [True, False, True]
    assert step(None, 3) == [True, False, True]
    out = proc.apply(logits.clone())
    torch.testing.assert_close(out[[0, 2]], _expected(head, logits[[0, 2]]), rtol=1e-6, atol=1e-6)
    # request 0 finishes; the last one moves into its row; then rows 0 and 1 swap
    assert step(BatchUpdate(2, [0], [], [(2, 0, MoveDirectionality.UNIDIRECTIONAL)]), 2) == [True, False]
    assert step(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]), 2) == [False, True]
    assert step(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]), 2) == [True, False]
    assert step(BatchUpdate(2, [], [(0, off, [1], [])], []), 2) == [False, False]  # a new request replaces row 0
