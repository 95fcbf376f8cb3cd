"""The paths a user takes outside the debug harness, as real subprocesses: a non-synthetic LLM run into a
fresh nested directory, a run that would overwrite another, a resume that changes what was trained, a
truncated checkpoint, bad overrides, missing paths, an --overwrite whose new inputs do not exist (nothing is
removed). Every user error is one `error: ...` line, exit 2. The first run is its own process; the refused
commands, the warning of an allowed large rho, and the resume and the --overwrite of two copies of the first run
run in one interpreter through tests/experiments/entry_points.py, each exactly as `python SCRIPT ARGV` would."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import pytest

from lm_runs import REPO, ENV, metrics
from entry_points import run_cases

pytestmark = pytest.mark.slow


def _run(*args, expect: int = 0):
    import subprocess

    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _error_line(result: dict) -> str:
    """The one `error: ...` line of a refused command (exit 2, no traceback)."""
    code, stderr = result["code"], result["stderr"]
    assert code == 2, f"exit {code}, expected 2:\n{stderr[-4000:]}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


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


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    """The non-synthetic run into a fresh nested directory: (its directory, its hashes, its rows)."""
    out = tmp_path_factory.mktemp("first") / "runs" / "nested" / "gpt2"
    _run(*_gpt2(out, corpus))
    return out, _hashes(out), metrics(out)


def _refused_cases(corpus, out, tmp):
    """name -> [target, argv]: the commands that must be refused (and the one that warns), each as a user types it,
    then the resume of tmp/truncated and the --overwrite of tmp/overwritten (copies of the first run)."""
    def gpt2(run_dir, *extra, flag=()):
        target, *argv = _gpt2(run_dir, corpus, *extra)
        return [target, [*map(str, argv), *flag]]

    return {
        # into the first run's directory: none of them may touch it
        "again": gpt2(out),  # without --resume
        "resume_changed_objective": gpt2(out, "objective=ce", "train.max_steps=8", flag=["--resume"]),
        "overwrite_bad_integer": gpt2(out, "train.max_steps=abc", flag=["--overwrite"]),
        "overwrite_missing_data": gpt2(out, f"data.files=[{corpus / 'corpus.txtt'}]", flag=["--overwrite"]),
        "overwrite_missing_tokenizer": gpt2(out, f"model.tokenizer={corpus / 'tokenizr'}", flag=["--overwrite"]),
        # missing paths
        "missing_data": gpt2(tmp / "a", f"data.files=[{tmp / 'nope.txt'}]"),
        "missing_tokenizer": gpt2(tmp / "b", f"model.tokenizer={tmp / 'no_tokenizer'}"),
        "missing_model": ["tempnet.cli", ["generate", "/no/such/dir", "--prompt", "the"]],
        "missing_config": ["GPT_2/train.py", ["--config", str(tmp / "missing.yaml"), "--output-dir", str(tmp / "c")]],
        "clip_bad_epochs": ["Bimodal-CL/train.py", ["--config", "Bimodal-CL/configs/debug.yaml", "--output-dir",
                                                    str(tmp / "d"), "train.epochs=two"]],
        # rho at or above log V: refused, or a warning when allowed (that run trains one step)
        "rho_refused": gpt2(tmp / "rho_a", "tempnet.rho=8.0"),
        "rho_allowed": gpt2(tmp / "rho_b", "tempnet.rho=8.0", "tempnet.allow_large_rho=true", "train.max_steps=1"),
        # the first run's copies: one whose newest checkpoint is truncated resumed, one overwritten
        "resume_truncated": gpt2(tmp / "truncated", "train.max_steps=8", flag=["--resume"]),
        "overwrite": gpt2(tmp / "overwritten", "train.max_steps=2", flag=["--overwrite"]),
    }


@pytest.fixture(scope="module")
def refused(corpus, first_run, tmp_path_factory):
    """The commands of _refused_cases run as tests/experiments/entry_points.py runs them (each exactly as
    `python SCRIPT ARGV` / `python -m MODULE ARGV`, in one interpreter: the imports paid once): ({name: {code,
    stderr}}, the first run's hashes right after them, the directory of the refused commands and copies). The
    copies of the first run are made before: `truncated` with checkpoint-6/optimizer.pt cut to 100 bytes."""
    out = first_run[0]
    tmp = tmp_path_factory.mktemp("refused")
    for copy in ("truncated", "overwritten"):
        shutil.copytree(out, tmp / copy)
    optimizer = tmp / "truncated" / "checkpoint-6" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    return run_cases(_refused_cases(corpus, out, tmp), tmp / "cases.json"), _hashes(out), tmp


def test_real_data_run_into_a_fresh_nested_directory_and_what_protects_it(corpus, first_run, refused):
    out, before, first_rows = first_run
    assert [r["step"] for r in first_rows] == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "model.safetensors").is_file() and not (out / "debug_assets").exists()
    got, after, tmp = refused

    message = _error_line(got["again"])  # again, without --resume: refused
    assert "already holds a run" in message and "--resume" in message and "--overwrite" in message

    message = _error_line(got["resume_changed_objective"])
    assert "['objective']" in message and "'tempnet_dro' -> 'ce'" in message

    message = _error_line(got["overwrite_bad_integer"])
    assert "train.max_steps needs an integer, got 'abc'" in message

    # --overwrite checks the new inputs before it removes anything: a typo deletes nothing
    message = _error_line(got["overwrite_missing_data"])
    assert "data.files: no such file" in message and "corpus.txtt" in message
    message = _error_line(got["overwrite_missing_tokenizer"])
    assert "model.tokenizer: no such file or directory" in message
    assert after == before  # none of the five refused commands touched the run

    # a truncated newest checkpoint (in a copy of the run): resume from the newest intact one, with a warning
    # naming the file
    resumed, overwritten = tmp / "truncated", tmp / "overwritten"
    assert got["resume_truncated"]["code"] == 0, got["resume_truncated"]["stderr"][-4000:]
    stderr = got["resume_truncated"]["stderr"]
    assert "skipping" in stderr and "checkpoint-6/optimizer.pt is truncated" in stderr
    assert f"resumed from {resumed / 'checkpoint-4'}" in stderr
    rows = metrics(resumed)
    assert [r["step"] for r in rows] == list(range(1, 9))  # steps 5 and 6 redone from checkpoint-4 ...
    assert [r["loss"] for r in rows[:5]] == [r["loss"] for r in first_rows[:5]]  # ... from the same weights

    assert got["overwrite"]["code"] == 0, got["overwrite"]["stderr"][-4000:]  # another copy, overwritten
    assert "--overwrite: removing" in got["overwrite"]["stderr"] and [r["step"] for r in metrics(overwritten)] == [1, 2]
    assert sorted(p.name for p in overwritten.glob("checkpoint-*")) == ["checkpoint-2"]


def test_missing_paths_are_reported_as_missing(refused):
    got, *_ = refused
    message = _error_line(got["missing_data"])
    assert "no such file" in message and "nope.txt" in message
    message = _error_line(got["missing_tokenizer"])
    assert "model.tokenizer: no such file or directory" in message
    message = _error_line(got["missing_model"])
    assert message == "error: model: no such file or directory: /no/such/dir"
    message = _error_line(got["missing_config"])
    assert "config file not found" in message
    message = _error_line(got["clip_bad_epochs"])
    assert "train.epochs needs an integer, got 'two'" in message


def test_rho_at_or_above_log_v_is_refused_naming_both_numbers(refused):
    got, *_ = refused
    message = _error_line(got["rho_refused"])
    assert "tempnet.rho=8.0 >= log V = 5.951" in message and "V=384" in message
    assert got["rho_allowed"]["code"] == 0, got["rho_allowed"]["stderr"][-4000:]
    assert "the DRO constraint is vacuous" in got["rho_allowed"]["stderr"]  # a warning, and the run goes on


def test_generated_tokens_are_shown_as_text_not_byte_level_symbols(corpus):
    from transformers import AutoTokenizer

    from tempnet.cli import token_texts

    tokenizer = AutoTokenizer.from_pretrained(corpus / "tokenizer")  # byte-level BPE: ' the' is the piece 'Ġthe'
    ids = tokenizer(" the big cat .")["input_ids"]
    assert any(p.startswith("\u0120") for p in tokenizer.convert_ids_to_tokens(ids))
    texts = token_texts(tokenizer, ids)
    assert "".join(texts) == " the big cat ." and all("\u0120" not in t for t in texts)
    assert texts[0].startswith(" ")
