"""Token cache, packed blocks, Alpaca masking and the step sampler of the LLM trainer (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("transformers")

from tempnet.data.lm import (IGNORE_INDEX, InstructionExamples, PackedBlocks, StepBatchSampler,  # noqa: E402
                             build_token_cache, format_prompt)
from tempnet.train.lm_config import DataConfig  # noqa: E402
from tempnet.train.lm_debug import train_tokenizer, synthetic_documents, synthetic_instructions  # noqa: E402


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tok")
    docs = synthetic_documents(100, seed=0)
    train_tokenizer("gpt2", docs, 320, root / "gpt2")
    train_tokenizer("llama", docs + [r["instruction"] for r in synthetic_instructions(50, 0)], 320, root / "llama")
    return {k: AutoTokenizer.from_pretrained(root / k) for k in ("gpt2", "llama")}


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_packed_blocks_are_the_documents_joined_by_eos(tokenizers, tmp_path):
    tok = tokenizers["gpt2"]
    docs = ["count one two three .", "the big cat sees the dog .", "count four five six seven ."]
    data = DataConfig(files=[str(_jsonl(tmp_path / "d.jsonl", docs))], seq_len=4)
    path = build_token_cache(data, tok, tmp_path / "cache")
    expected = [i for d in docs for i in tok(d)["input_ids"] + [tok.eos_token_id]]
    blocks = PackedBlocks(path, 4)
    assert len(blocks) == len(expected) // 4
    flat = torch.cat([blocks[i]["input_ids"] for i in range(len(blocks))])
    assert flat.tolist() == expected[:len(blocks) * 4]
    item = blocks[1]
    assert torch.equal(item["labels"], item["input_ids"]) and item["attention_mask"].all()


def test_cache_is_reused_and_keyed_by_tokenizer_and_settings(tokenizers, tmp_path):
    data = DataConfig(files=[str(_jsonl(tmp_path / "d.jsonl", synthetic_documents(20, 1)))], seq_len=8)
    first = build_token_cache(data, tokenizers["gpt2"], tmp_path / "cache")
    stamp = (first / "tokens.bin").stat().st_mtime_ns
    assert build_token_cache(data, tokenizers["gpt2"], tmp_path / "cache") == first
    assert (first / "tokens.bin").stat().st_mtime_ns == stamp  # not re-tokenised
    assert build_token_cache(data, tokenizers["llama"], tmp_path / "cache") != first
    data.seq_len = 16
    assert build_token_cache(data, tokenizers["gpt2"], tmp_path / "cache") != first


def test_alpaca_examples_mask_the_prompt(tokenizers, tmp_path):
    tok = tokenizers["llama"]
    records = [{"instruction": "Repeat the words.", "input": "cat dog", "output": "cat dog"},
               {"instruction": "Count on from one.", "input": "", "output": "two three"}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    data = DataConfig(format="alpaca", files=[str(tmp_path / "a.json")], seq_len=96)
    ds = InstructionExamples(build_token_cache(data, tok, tmp_path / "cache"))
    assert len(ds) == 2
    for i, record in enumerate(records):
        item = ds[i]
        n = int(item["attention_mask"].sum())
        prompt = tok(format_prompt(record, "llama2_chat"))["input_ids"]
        assert item["input_ids"][:len(prompt)].tolist() == prompt
        assert (item["labels"][:len(prompt)] == IGNORE_INDEX).all() and (item["labels"][n:] == IGNORE_INDEX).all()
        answer = item["labels"][len(prompt):n]
        assert (answer != IGNORE_INDEX).all() and answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]).strip() == record["output"]
    assert format_prompt(records[0], "llama2_chat") == "[INST] Repeat the words.\n\ncat dog [/INST]"
    assert "### Input:\ncat dog" in format_prompt(records[0], "alpaca")


def test_missing_files_and_columns_are_clear_errors(tokenizers, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_token_cache(DataConfig(files=[str(tmp_path / "nope.jsonl")]), tokenizers["gpt2"], tmp_path / "c")
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "a b c"}) + "\n")
    with pytest.raises(ValueError, match="text_field"):
        build_token_cache(DataConfig(files=[str(tmp_path / "x.jsonl")]), tokenizers["gpt2"], tmp_path / "c")


def _steps(sampler: StepBatchSampler) -> list[list[int]]:
    return list(sampler)


def test_sampler_splits_the_global_batch_rank_major():
    n, micro, steps = 23, 2, 7
    one = _steps(StepBatchSampler(n, micro, 2, 1, 0, seed=3, start_step=0, max_steps=steps))  # accumulation 2
    ranks = [_steps(StepBatchSampler(n, micro, 1, 2, r, seed=3, start_step=0, max_steps=steps)) for r in range(2)]
    for step in range(steps):
        assert one[2 * step] == ranks[0][step] and one[2 * step + 1] == ranks[1][step]
    stream = [i for batch in one for i in batch]
    assert sorted(stream[:n]) == list(range(n))  # each epoch is a permutation
    assert stream[:n] != list(range(n))


def test_sampler_resumes_mid_run():
    full = _steps(StepBatchSampler(11, 3, 2, 1, 0, seed=0, start_step=0, max_steps=9))
    resumed = _steps(StepBatchSampler(11, 3, 2, 1, 0, seed=0, start_step=4, max_steps=9))
    assert resumed == full[8:] and len(resumed) == len(StepBatchSampler(11, 3, 2, 1, 0, 0, 4, 9))
