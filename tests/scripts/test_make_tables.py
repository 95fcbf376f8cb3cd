"""scripts/make_tables.py: a results directory of known numbers gives exactly the expected tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import REPO, load_module


make_tables = load_module("make_tables", REPO / "scripts" / "make_tables.py")


def _lm_eval_file(path: Path, results: dict, mtime: float | None = None) -> None:
    """A results JSON as lm-eval 0.4 writes it (--output_path DIR -> DIR/<model>/results_<time>.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, "configs": {}, "versions": {}, "n-shot": {}}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _acc(value, stderr=None, **extra):
    out = {"alias": "x", "acc,none": value, **{f"{k},none": v for k, v in extra.items()}}
    if stderr is not None:
        out["acc_stderr,none"] = stderr
    return out


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    llm = root / "llm"
    _lm_eval_file(llm / "gpt2_scratch_baseline" / "runs__gpt2" / "results_2026-01-01T00-00-00.json", {
        "piqa": _acc(0.6123, 0.0110),
        "hellaswag": _acc(0.2800, 0.0044, acc_norm=0.2891, acc_norm_stderr=0.0045),
        "arc_easy": _acc(0.4012, 0.0101, acc_norm=0.3900, acc_norm_stderr=0.0100),
        "arc_challenge": _acc(0.2000, 0.0117, acc_norm=0.2210, acc_norm_stderr=0.0121),
        "openbookqa": _acc(0.1800, 0.0172, acc_norm=0.2740, acc_norm_stderr=0.0200),
        "lambada_openai": {"perplexity,none": 40.5, "perplexity_stderr,none": 1.5, "acc,none": 0.3,
                           "acc_stderr,none": 0.006},
        "wikitext": {"word_perplexity,none": 49.0, "word_perplexity_stderr,none": "N/A",
                     "byte_perplexity,none": 1.9, "bits_per_byte,none": 0.93},
    })
    tempnet = llm / "gpt2_scratch_tempnet" / "runs__gpt2"
    _lm_eval_file(tempnet / "results_2026-01-01T00-00-00.json", {  # older file: its piqa is overridden
        "piqa": _acc(0.1, 0.01), "wikitext": {"word_perplexity,none": 47.5}}, mtime=1_000_000)
    _lm_eval_file(tempnet / "results_2026-01-02T00-00-00.json", {
        "piqa": _acc(0.6200, 0.0113),
        "hellaswag": _acc(0.2900, 0.0045, acc_norm=0.2850, acc_norm_stderr=0.0045),
        "arc_easy": _acc(0.4100, 0.0101),
        "arc_challenge": _acc(0.2100, 0.0119, acc_norm=0.2300, acc_norm_stderr=0.0123),
        "openbookqa": _acc(0.1900, 0.0176, acc_norm=0.2740, acc_norm_stderr=0.0200),
        "lambada_openai": {"perplexity,none": 38.25, "perplexity_stderr,none": 1.4},
    }, mtime=2_000_000)
    _lm_eval_file(llm / "gpt2_finetune_tempnet" / "m" / "results_a.json", {"piqa": _acc(0.63)})  # no average
    _lm_eval_file(llm / "ce" / "m" / "results_a.json", {"piqa": _acc(0.60)})
    _lm_eval_file(llm / "tempnet_dro" / "m" / "results_a.json", {"piqa": _acc(0.61)})

    clip = root / "clip"
    (clip / "clip").mkdir(parents=True)
    (clip / "clip" / "eval.json").write_text(json.dumps(
        {"epoch": 30, "img_r1": 1.0, "flickr30k/img_r1": 40.0, "flickr30k/txt_r1": 50.5, "flickr30k/r_mean": 70.0,
         "imagenet/zeroshot_top1": 36.0, "imagenet/zeroshot_top5": 60.0}))
    for sub, record in (("flickr30k", {"img_r1": 99.0, "flickr30k/img_r1": 46.0, "flickr30k/txt_r1": 62.0}),
                        ("zeroshot", {"imagenet/zeroshot_top1": 42.5, "cifar10/zeroshot_top1": 70.25})):
        (clip / "isogclr_tempnet" / sub).mkdir(parents=True)
        (clip / "isogclr_tempnet" / sub / "eval.json").write_text(json.dumps(record))

    alpaca = root / "alpaca"
    for row in ("llama2_chat_7b_tau0.7", "llama2_chat_7b_tempnet"):
        (alpaca / row).mkdir(parents=True)
        (alpaca / row / "model_outputs.json").write_text(json.dumps(
            [{"instruction": "hi", "output": "hello", "generator": row}]))
    board = alpaca / "llama2_chat_7b_tempnet" / "weighted_alpaca_eval_gpt4_turbo" / "leaderboard.csv"
    board.parent.mkdir()
    board.write_text(",win_rate,standard_error,n_wins,n_wins_base,n_draws,n_total,discrete_win_rate,mode,avg_length,"
                     "length_controlled_winrate,lc_standard_error\n"
                     "gpt4_turbo,50.0,0.0,402,402,1,805,50.0,verified,2049,50.0,0.0\n"
                     "llama2_chat_7b_tempnet,4.9,0.75,39,766,0,805,4.84,community,1479,5.8,0.2\n")
    return root


GOLDEN = """\
### GPT-2 125M on OpenWebText2 (lm-eval, zero-shot)

| row | PIQA | HellaSwag | ARC-e | ARC-c | OBQA | Avg. | LAMBADA (ppl) | WikiText (ppl) |
|---|---|---|---|---|---|---|---|---|
| gpt2_finetune_tempnet | **63.00** |  |  |  |  |  |  |  |
| gpt2_scratch_baseline | 61.23 ± 1.10 | **28.91 ± 0.45** | 40.12 ± 1.01 | 22.10 ± 1.21 | **27.40 ± 2.00** | 35.95 | 40.50 ± 1.50 | 49.00 |
| gpt2_scratch_tempnet | 62.00 ± 1.13 | 28.50 ± 0.45 | **41.00 ± 1.01** | **23.00 ± 1.23** | **27.40 ± 2.00** | **36.38** | **38.25 ± 1.40** | **47.50** |

_metrics: PIQA acc, HellaSwag acc_norm, ARC-e acc, ARC-c acc_norm, OBQA acc_norm, LAMBADA perplexity, WikiText word_perplexity_

### Ablation, GPT-2 from scratch: no TempNet / DRO only / TempNet only / both

| row | PIQA | Avg. |
|---|---|---|
| ce | 60.00 | 60.00 |
| tempnet_dro | **61.00** | **61.00** |

_metrics: PIQA acc_

### AlpacaEval (vs. the reference outputs), percent

| row | LC win rate | Win rate |
|---|---|---|
| llama2_chat_7b_tau0.7 | not scored | not scored |
| llama2_chat_7b_tempnet | 5.80 ± 0.20 | 4.90 ± 0.75 |

_scored with `alpaca_eval --model_outputs RESULTS_DIR/alpaca/<row>/model_outputs.json`_

### CLIP on CC3M: zero-shot retrieval (IR@1, TR@1) and classification (top-1)

| row | Flickr30K IR@1 | Flickr30K TR@1 | CIFAR-10 top-1 | ImageNet top-1 |
|---|---|---|---|---|
| clip | 40.00 | 50.50 |  | 36.00 |
| isogclr_tempnet | **46.00** | **62.00** | 70.25 | **42.50** |

_IR@1 = text -> image recall@1, TR@1 = image -> text recall@1_
"""


def test_known_numbers_give_the_golden_markdown(results, capsys):
    assert make_tables.main([str(results)]) == 0
    assert capsys.readouterr().out == GOLDEN


def test_paper_rows_sit_beside_ours(results, capsys):
    assert make_tables.main([str(results), "--paper"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    ours = lines.index(next(line for line in lines if line.startswith("| gpt2_scratch_tempnet |")))
    assert lines[ours + 1] == "| gpt2_scratch_tempnet (paper) |  |  |  |  |  | 32.24 |  | 47.32 |"
    assert "| gpt2_scratch_baseline (paper) |  |  |  |  |  | 31.44 |  | 49.86 |" in lines
    assert "| dro (paper) |  | 31.78 |" in lines and "| tempnet_ce (paper) |  | 31.76 |" in lines
    assert "| llama2_chat_7b_tempnet (paper) | 5.74 |  |" in lines
    assert "| llama2_7b_tempnet (paper) | 59.44 | 3.21 |" in lines  # a table of the paper's rows alone
    assert "| isogclr (paper) | 44.36 | 60.20 |  | 40.72 |" in lines
    # the paper's rows are never bold and do not take the bold from ours
    assert "**47.50**" in out  # the paper's 47.32 is lower, but bold marks the best of our rows
    assert not any("(paper)" in line and "**" in line for line in lines)


def test_json_output(results, capsys):
    assert make_tables.main([str(results), "--json"]) == 0
    tables = {t["key"]: t for t in json.loads(capsys.readouterr().out)}
    assert list(tables) == ["gpt2", "ablation", "alpaca", "clip"]
    row = next(r for r in tables["gpt2"]["rows"] if r["name"] == "gpt2_scratch_baseline")
    assert row["cells"]["hellaswag"]["value"] == pytest.approx(28.91)
    assert row["cells"]["hellaswag"]["stderr"] == pytest.approx(0.45)
    assert row["cells"]["avg"]["value"] == pytest.approx((61.23 + 28.91 + 40.12 + 22.10 + 27.40) / 5)
    assert row["cells"]["wikitext"] == {"value": 49.0, "stderr": None, "text": None}


def test_metric_override_and_bad_input(results, tmp_path, capsys):
    assert make_tables.main([str(results), "--metric", "hellaswag=acc", "--json"]) == 0
    tables = {t["key"]: t for t in json.loads(capsys.readouterr().out)}
    row = next(r for r in tables["gpt2"]["rows"] if r["name"] == "gpt2_scratch_tempnet")
    assert row["cells"]["hellaswag"]["value"] == pytest.approx(29.0)
    from tempnet.errors import run_cli

    def user_error(argv):  # the script's command line: one `error: ...` line, exit status 2
        with pytest.raises(SystemExit) as exit_:
            run_cli(make_tables.main, argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and "Traceback" not in err
        return err

    assert "does not exist" in user_error([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "no results in" in user_error([str(tmp_path / "empty")])
    bad = tmp_path / "bad" / "llm" / "row" / "results_x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"not": "lm-eval"}')
    assert "no 'results' section" in user_error([str(tmp_path / "bad")])
    with pytest.raises(SystemExit):
        make_tables.main([str(results), "--metric", "hellaswag"])
