"""scripts/alpaca_outputs.py: AlpacaEval model outputs of a tiny chat model, with its TempNet and at a fixed tau."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, load_module


alpaca_outputs = load_module("alpaca_outputs", REPO / "scripts" / "alpaca_outputs.py")
eval_runs = load_module("eval_runs_helpers", REPO / "tests" / "experiments" / "eval_runs.py")

INSTRUCTIONS = [{"instruction": "How do you get water in the desert?", "dataset": "helpful_base"},
                {"instruction": "Find shade.", "input": "the sun on the sand"},
                {"instruction": "Where does the camel drink?"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return eval_runs.train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def chat_dir(tmp_path, tokenizer):
    return eval_runs.tiny_checkpoint(tmp_path / "chat", tokenizer, chat_template=eval_runs.CHAT_TEMPLATE)


def _alpaca_eval_loader():
    """alpaca_eval's own reader of --model_outputs (pip install alpaca-eval)."""
    utils = pytest.importorskip("alpaca_eval.utils")
    return utils.load_or_convert_to_dataframe


def test_three_instructions_give_a_valid_alpaca_eval_file(chat_dir, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(INSTRUCTIONS))
    written = {}
    for row, extra in (("tiny_tempnet", []), ("tiny_tau0.7", ["--tau", "0.7"])):
        written[row] = alpaca_outputs.main(["--model", str(chat_dir), "--instructions", str(tmp_path / "eval.json"),
                                            "--row", row, "--results-dir", str(tmp_path / "results"),
                                            "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "6",
                                            "--batch-size", "2", *extra])
        assert written[row] == tmp_path / "results" / "alpaca" / row / "model_outputs.json"
    load = _alpaca_eval_loader()
    for row, path in written.items():
        records = json.loads(path.read_text())
        assert [r["instruction"] for r in records] == [r["instruction"] for r in INSTRUCTIONS]
        assert all(r["generator"] == row and isinstance(r["output"], str) for r in records)
        assert records[0]["dataset"] == "helpful_base" and "dataset" not in records[1]
        frame = load(str(path))  # what `alpaca_eval --model_outputs PATH` reads
        assert len(frame) == 3 and {"instruction", "output", "generator"} <= set(frame.columns)
        assert set(frame["generator"]) == {row}
    tempnet = json.loads(written["tiny_tempnet"].read_text())
    fixed = json.loads(written["tiny_tau0.7"].read_text())
    assert [r["output"] for r in tempnet] != [r["output"] for r in fixed]  # two different temperatures


def test_tau_modes_match_the_wrapper_and_the_processor(chat_dir, tokenizer):
    """Sampling with the script's TempNet mode equals the wrapper model's own generate; the fixed mode equals
    the plain base model's logits / tau (transformers' own temperature), step for step."""
    from transformers import LlamaForCausalLM

    from tempnet.integrations.hf import tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(chat_dir, dtype=torch.float32).eval()
    prompts = [alpaca_outputs.user_prompt(r) for r in INSTRUCTIONS]
    ids = [alpaca_outputs.encode_prompt(tokenizer, p) for p in prompts]
    kw = {"max_new_tokens": 5, "batch_size": 1, "seed": 3}

    got = alpaca_outputs.generate_outputs(model, tokenizer, prompts, **kw)
    torch.manual_seed(3)
    want = [tokenizer.decode(model.generate(torch.tensor([x]), max_new_tokens=5, do_sample=True, top_p=0.9,
                                            top_k=0, temperature=1.0, pad_token_id=0)[0, len(x):],
                             skip_special_tokens=True).strip() for x in ids]
    assert got == want

    fixed = alpaca_outputs.generate_outputs(model, tokenizer, prompts, tau=0.7, **kw)
    base = LlamaForCausalLM.from_pretrained(chat_dir, dtype=torch.float32).eval()
    torch.manual_seed(3)
    want = [tokenizer.decode(base.generate(torch.tensor([x]), max_new_tokens=5, do_sample=True, top_p=0.9, top_k=0,
                                           temperature=0.7, pad_token_id=0)[0, len(x):],
                             skip_special_tokens=True).strip() for x in ids]
    assert fixed == want
    assert type(model.tempnet).__name__ == "TempNet"  # the head is restored after the fixed-tau run


def test_prompt_formats(tokenizer, chat_dir):
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(chat_dir)
    ids = alpaca_outputs.encode_prompt(chat, "find shade")
    assert chat.decode(ids) == "<s><|user|> find shade <|assistant|>"  # the template, one BOS
    tokenizer.chat_template = None
    ids = alpaca_outputs.encode_prompt(tokenizer, "find shade")
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "[INST] find shade [/INST]"  # LLaMA-2-Chat fallback
    assert tokenizer.decode(alpaca_outputs.encode_prompt(tokenizer, "x", "plain"), skip_special_tokens=True) == "x"
    with pytest.raises(ValueError, match="no chat template"):
        alpaca_outputs.encode_prompt(tokenizer, "x", "chat_template")
    assert alpaca_outputs.user_prompt({"instruction": "a", "input": " b "}) == "a\n\nb"


def test_instruction_files(tmp_path):
    jsonl = tmp_path / "i.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    assert alpaca_outputs.read_instructions(jsonl) == INSTRUCTIONS
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "ok"}, {"prompt": "no instruction"}]))
    with pytest.raises(ValueError, match="record 1 .* no non-empty 'instruction'"):
        alpaca_outputs.read_instructions(bad)
    bad.write_text(json.dumps({"instruction": "one object"}))
    with pytest.raises(ValueError, match="one JSON object"):
        alpaca_outputs.read_instructions(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="neither a JSON list nor JSONL"):
        alpaca_outputs.read_instructions(bad)


@pytest.mark.slow
def test_launch_script_writes_both_rows(chat_dir, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(INSTRUCTIONS))
    env = {"PATH": subprocess.os.environ["PATH"], "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "CKPT": str(chat_dir), "INSTRUCTIONS": str(tmp_path / "eval.json"),
           "RESULTS_DIR": str(tmp_path / "results"), "ROW": "tiny_chat", "HOME": subprocess.os.environ.get("HOME", "/")}
    proc = subprocess.run(["bash", "LLaMA-2/scripts/alpaca_chat_7b.sh", "--device", "cpu", "--dtype", "float32",
                           "--max-new-tokens", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("tiny_chat_tempnet", "tiny_chat_tau0.7"):
        records = json.loads((tmp_path / "results" / "alpaca" / row / "model_outputs.json").read_text())
        assert len(records) == 3 and {r["generator"] for r in records} == {row}
    tables = subprocess.run([sys.executable, "scripts/make_tables.py", str(tmp_path / "results")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "| tiny_chat_tau0.7 | not scored | not scored |" in tables.stdout
