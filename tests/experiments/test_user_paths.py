"""The paths a user takes outside the debug harness, as real subprocesses: a non-synthetic LLM run into a
fresh nested directory, a run that would overwrite another, a resume that changes what was trained, a
truncated checkpoint, bad overrides, missing paths, an --overwrite whose new inputs do not exist (nothing is
removed). Every user error is one `error: ...` line, exit 2."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from lm_runs import REPO, ENV, metrics

pytestmark = pytest.mark.slow


def _run(*args, expect: int = 0):
    import subprocess

    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    if expect == 2:
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr
        return errors[0]
    return proc


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A local text file and a tokenizer directory trained on it (what a user brings)."""
    from tempnet.train.lm_debug import synthetic_documents, train_tokenizer

    root = tmp_path_factory.mktemp("user_data")
    docs = synthetic_documents(200, seed=7)
    (root / "corpus.txt").write_text("\n".join(docs) + "\n")
    train_tokenizer("gpt2", docs, 384, root / "tokenizer")
    return root


def _gpt2(out, corpus, *extra):
    return ["GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml", "--output-dir", out, "data.synthetic=false",
            f"data.files=[{corpus / 'corpus.txt'}]", f"model.tokenizer={corpus / 'tokenizer'}", "train.max_steps=6",
            "train.save_every=2", "train.keep_last=3", "train.progress_bar=false", *extra]


def test_real_data_run_into_a_fresh_nested_directory_and_what_protects_it(corpus, tmp_path):
    out = tmp_path / "runs" / "nested" / "gpt2"
    _run(*_gpt2(out, corpus))
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "model.safetensors").is_file() and not (out / "debug_assets").exists()
    before, first_rows = _hashes(out), metrics(out)

    message = _run(*_gpt2(out, corpus), expect=2)  # again, without --resume: refused, nothing touched
    assert "already holds a run" in message and "--resume" in message and "--overwrite" in message
    assert _hashes(out) == before

    message = _run(*_gpt2(out, corpus, "objective=ce", "train.max_steps=8"), "--resume", expect=2)
    assert "['objective']" in message and "'tempnet_dro' -> 'ce'" in message
    assert _hashes(out) == before

    message = _run(*_gpt2(out, corpus, "train.max_steps=abc"), "--overwrite", expect=2)
    assert "train.max_steps needs an integer, got 'abc'" in message
    assert _hashes(out) == before

    # --overwrite checks the new inputs before it removes anything: a typo deletes nothing
    message = _run(*_gpt2(out, corpus, f"data.files=[{corpus / 'corpus.txtt'}]"), "--overwrite", expect=2)
    assert "data.files: no such file" in message and "corpus.txtt" in message
    message = _run(*_gpt2(out, corpus, f"model.tokenizer={corpus / 'tokenizr'}"), "--overwrite", expect=2)
    assert "model.tokenizer: no such file or directory" in message
    assert _hashes(out) == before

    # a truncated newest checkpoint: resume from the newest intact one, with a warning naming the file
    optimizer = out / "checkpoint-6" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    proc = _run(*_gpt2(out, corpus, "train.max_steps=8"), "--resume")
    assert "skipping" in proc.stderr and "checkpoint-6/optimizer.pt is truncated" in proc.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))  # steps 5 and 6 redone from checkpoint-4 ...
    assert [r["loss"] for r in rows[:5]] == [r["loss"] for r in first_rows[:5]]  # ... from the same weights

    proc = _run(*_gpt2(out, corpus, "train.max_steps=2"), "--overwrite")
    assert "--overwrite: removing" in proc.stderr and [r["step"] for r in metrics(out)] == [1, 2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_missing_paths_are_reported_as_missing(corpus, tmp_path):
    message = _run(*_gpt2(tmp_path / "a", corpus, f"data.files=[{tmp_path / 'nope.txt'}]"), expect=2)
    assert "no such file" in message and "nope.txt" in message
    message = _run(*_gpt2(tmp_path / "b", corpus, f"model.tokenizer={tmp_path / 'no_tokenizer'}"), expect=2)
    assert "model.tokenizer: no such file or directory" in message
    message = _run("-m", "tempnet.cli", "generate", "/no/such/dir", "--prompt", "the", expect=2)
    assert message == "error: model: no such file or directory: /no/such/dir"
    message = _run("GPT_2/train.py", "--config", tmp_path / "missing.yaml", "--output-dir", tmp_path / "c", expect=2)
    assert "config file not found" in message
    message = _run("Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", tmp_path / "d",
                   "train.epochs=two", expect=2)
    assert "train.epochs needs an integer, got 'two'" in message


def test_rho_at_or_above_log_v_is_refused_naming_both_numbers(corpus, tmp_path):
    message = _run(*_gpt2(tmp_path / "a", corpus, "tempnet.rho=8.0"), expect=2)
    assert "tempnet.rho=8.0 >= log V = 5.951" in message and "V=384" in message
    proc = _run(*_gpt2(tmp_path / "b", corpus, "tempnet.rho=8.0", "tempnet.allow_large_rho=true",
                       "train.max_steps=1"))
    assert "the DRO constraint is vacuous" in proc.stderr  # a warning, and the run goes on


def test_generated_tokens_are_shown_as_text_not_byte_level_symbols(corpus):
    from transformers import AutoTokenizer

    from tempnet.cli import token_texts

    tokenizer = AutoTokenizer.from_pretrained(corpus / "tokenizer")  # byte-level BPE: ' the' is the piece 'Ġthe'
    ids = tokenizer(" the big cat .")["input_ids"]
    assert any(p.startswith("\u0120") for p in tokenizer.convert_ids_to_tokens(ids))
    texts = token_texts(tokenizer, ids)
    assert "".join(texts) == " the big cat ." and all("\u0120" not in t for t in texts)
    assert texts[0].startswith(" ")
