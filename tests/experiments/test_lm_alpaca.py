"""Alpaca-format data through the LLM trainer (LLaMA-2/train.py, frozen tiny LLaMA, in-process main(argv)).

What tempnet/data/lm.py documents: one example per record, prompt (+ input) then response and EOS, cut to
data.seq_len and padded; the prompt's labels are -100 (only the response is learned); a record whose
prompt alone fills data.seq_len has nothing to learn and is skipped (a code comment in _alpaca_tokens;
the module docstring does not say it); no record fitting at all is an error.
"""

from __future__ import annotations

import json

import pytest
import torch

from lm_runs import REPO, main_in_process, metrics

pytestmark = pytest.mark.slow

SEQ_LEN = 40
RECORDS = [
    {"instruction": "Count on from one.", "input": "", "output": "two three four"},
    {"instruction": "Repeat the words.", "input": "cat dog", "output": " ".join(["cat dog bird fish"] * 8)},  # cut
    {"instruction": "Repeat the words. " * 12, "input": "", "output": "cat"},  # the prompt alone > SEQ_LEN
    {"instruction": "Repeat the words.", "input": "tree house", "output": "tree house"},
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The debug chat config's tokenizer and frozen base model (made once, as the trainer's debug mode does)."""
    from tempnet.config import load_config
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_debug import prepare_debug_assets

    cfg = load_config(LMTrainConfig, REPO / "LLaMA-2/configs/debug_chat.yaml")
    overrides = prepare_debug_assets(cfg, tmp_path_factory.mktemp("chat_assets"))
    return overrides["model"]["path"], overrides["model"]["tokenizer"]


def _train(out, assets, records, *extra):
    data = out.parent / f"{out.name}.json"
    data.write_text(json.dumps(records))
    path, tokenizer = assets
    return main_in_process("LLaMA-2", [
        "--config", str(REPO / "LLaMA-2/configs/debug_chat.yaml"), "--output-dir", str(out), "data.synthetic=false",
        f"data.files=[{data}]", f"model.path={path}", f"model.tokenizer={tokenizer}", f"data.seq_len={SEQ_LEN}",
        "train.max_steps=1", "train.micro_batch_size=1", "train.global_batch_size=2", *extra])


def _expected_example(tokenizer, record):
    """(input_ids, labels) of one record, by the documented rule; None when the prompt fills SEQ_LEN."""
    from tempnet.data.lm import format_prompt

    prompt = tokenizer(format_prompt(record, "llama2_chat"))["input_ids"]
    answer = tokenizer(" " + record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= SEQ_LEN:
        return None
    ids = (prompt + answer)[:SEQ_LEN]
    labels = ([-100] * len(prompt) + answer)[:SEQ_LEN]
    return ids, labels


def test_alpaca_examples_through_the_trainer(assets, tmp_path):
    from transformers import AutoTokenizer

    from tempnet.config import load_config
    from tempnet.data.lm import build_token_cache, open_token_cache
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_model import build_model

    out = tmp_path / "run"
    _train(out, assets, RECORDS)
    cfg = load_config(LMTrainConfig, out / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(assets[1])
    expected = [e for e in (_expected_example(tokenizer, r) for r in RECORDS) if e is not None]
    assert len(expected) == 3 and _expected_example(tokenizer, RECORDS[2]) is None
    truncated = _expected_example(tokenizer, RECORDS[1])
    assert len(truncated[0]) == SEQ_LEN and truncated[1][-1] != tokenizer.eos_token_id  # the response was cut

    dataset = open_token_cache(build_token_cache(cfg.data, tokenizer, out / "token_cache"), cfg.data)
    assert len(dataset) == 3  # the record whose prompt fills the sequence is skipped
    for i, (ids, labels) in enumerate(expected):
        item = dataset[i]
        n = len(ids)
        assert item["input_ids"][:n].tolist() == ids and item["labels"][:n].tolist() == labels
        assert int(item["attention_mask"].sum()) == n and (item["labels"][n:] == -100).all()

    # the trainer's first loss: the mean over its 2 micro-batches (the first 2 of the seeded order) of the
    # model's loss on the hand-made labels, i.e. only response tokens count
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, tokenizer)
    order = torch.randperm(3, generator=torch.Generator().manual_seed(cfg.train.seed))[:2]
    losses = []
    with torch.no_grad():
        for i in order.tolist():
            ids, labels = expected[i]
            pad = SEQ_LEN - len(ids)
            batch = {"input_ids": torch.tensor([ids + [tokenizer.pad_token_id or 0] * pad]),
                     "attention_mask": torch.tensor([[1] * len(ids) + [0] * pad]),
                     "labels": torch.tensor([labels + [-100] * pad])}
            losses.append(model(**batch).loss.item())
    (row,) = metrics(out)
    assert row["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_no_record_fitting_is_an_error(assets, tmp_path):
    with pytest.raises(ValueError, match="no alpaca record with a response fits in data.seq_len"):
        _train(tmp_path / "run", assets, [RECORDS[2], RECORDS[2]])
