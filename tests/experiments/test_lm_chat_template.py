"""data.prompt_template=tokenizer through LLaMA-2/train.py: Alpaca-style records are formatted with the tokenizer's own
chat template (apply_chat_template), the prompt (user turn + generation prompt) masked out of the loss; a tokenizer
without a chat template is one error line (exit 2) and the run starts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lm_runs import ENV, REPO, main_in_process, metrics, train_cmd

pytestmark = pytest.mark.slow

SEQ_LEN = 48
RECORDS = [{"instruction": "Count on from one.", "input": "", "output": "two three four"},
           {"instruction": "Repeat the words.", "input": "cat dog", "output": "cat dog"},
           {"instruction": "Repeat the words.", "input": "tree house", "output": "tree house"}]
#: A chat template of the kind models ship (roles, turn delimiters, a generation prompt), over the tokenizer's own
#: special tokens so the debug model's vocabulary holds every id.
TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}{{ bos_token }}assistant:{% endif %}")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The debug chat config's base model, its tokenizer (no chat template) and a copy that has one."""
    from transformers import AutoTokenizer

    from tempnet.config import load_config
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_debug import prepare_debug_assets

    root = tmp_path_factory.mktemp("chat_template")
    cfg = load_config(LMTrainConfig, REPO / "LLaMA-2/configs/debug_chat.yaml")
    overrides = prepare_debug_assets(cfg, root)
    plain = overrides["model"]["tokenizer"]
    templated = root / "tokenizer-with-template"
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(templated)
    (root / "records.json").write_text(json.dumps(RECORDS))
    return {"base": overrides["model"]["path"], "plain": plain, "templated": templated, "data": root / "records.json"}


def _args(assets, tokenizer):
    return ("data.synthetic=false", f"data.files=[{assets['data']}]", f"model.path={assets['base']}",
            f"model.tokenizer={tokenizer}", "data.prompt_template=tokenizer", f"data.seq_len={SEQ_LEN}",
            "train.max_steps=1", "train.micro_batch_size=1", "train.global_batch_size=2", "train.progress_bar=false",
            "train.tensorboard=false")


def test_records_in_the_tokenizers_chat_template(assets, tmp_path):
    from transformers import AutoTokenizer

    from tempnet.config import load_config
    from tempnet.data.lm import build_token_cache, open_token_cache
    from tempnet.train.lm_config import LMTrainConfig

    out = tmp_path / "run"
    main_in_process("LLaMA-2", ["--config", REPO / "LLaMA-2/configs/debug_chat.yaml", "--output-dir", out,
                                *_args(assets, assets["templated"])])  # in this process: a run's numbers and files
    assert len(metrics(out)) == 1
    tokenizer = AutoTokenizer.from_pretrained(assets["templated"])
    cfg = load_config(LMTrainConfig, out / "config.yaml")
    dataset = open_token_cache(build_token_cache(cfg.data, tokenizer, out / "token_cache"), cfg.data)
    assert len(dataset) == len(RECORDS)
    for i, record in enumerate(RECORDS):  # the conversation written out by hand, then tokenised as one text
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        prompt_text = f"<s>user: {user}</s><s>assistant:"
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(f"{prompt_text} {record['output']}</s>", add_special_tokens=False)["input_ids"]
        assert ids[:len(prompt)] == prompt and ids[-1] == tokenizer.eos_token_id
        item, n = dataset[i], len(ids)
        assert item["input_ids"][:n].tolist() == ids
        assert item["labels"][:n].tolist() == [-100] * len(prompt) + ids[len(prompt):]  # the prompt is masked
        assert (item["labels"][n:] == -100).all()


def test_a_tokenizer_without_chat_template_is_one_error_line(assets, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, *map(str, train_cmd("LLaMA-2", out, *_args(assets, assets["plain"]),
                                                               config="debug_chat.yaml"))],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: data.prompt_template=tokenizer: the tokenizer ({assets['plain']}) has no chat template "
                      "(tokenizer_config.json / chat_template.jinja); use llama2_chat or alpaca"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()
