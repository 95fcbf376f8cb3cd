"""`python -m tempnet.demo` end to end on a shortened budget, the --data path, and the table layout it uses."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tempnet.demo.run import main

SHORT = ["--steps", "12", "--train-docs", "150", "--valid-docs", "6", "--clip-epochs", "1"]
ROWS = ("ce", "dro", "tempnet_ce", "tempnet_dro", "tempnet_dro+uncentred")


def _finite(x):
    return x is not None and math.isfinite(x)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "tiny"
    result = main(["--output-dir", str(out), *SHORT])
    return out, result


@pytest.mark.slow
def test_every_output_exists_and_is_finite(synthetic_run):
    out, _ = synthetic_run
    for name in ("lm.json", "tau_entropy.json", "clip.json", "run.json", "tables.md", "demo_tau_entropy.png",
                 "demo_tau_sample.png", "demo_loss_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    lm = json.loads((out / "lm.json").read_text())
    assert set(lm) == set(ROWS)  # the four objectives and the uncentred variant beside them
    for row, rec in lm.items():
        for key in ("val_ppl", "val_ppl_tau", "true_entropy_ppl"):
            assert _finite(rec[key]), (row, key)
        # the source's entropy is a floor no model can beat (here: far from it after 12 steps)
        assert rec["true_entropy_ppl"] <= rec["val_ppl"], row
        assert rec["true_entropy_ppl"] <= rec["val_ppl_tau"], row
    assert lm["ce"]["val_ppl"] == pytest.approx(lm["ce"]["val_ppl_tau"], rel=1e-6)  # ce: tau is 1
    tau = json.loads((out / "tau_entropy.json").read_text())
    for key in ("n_positions", "tau_std", "tau_p5", "tau_p95"):
        assert _finite(tau[key]), key
    assert tau["n_positions"] == 6 * 62  # 6 documents of 63 tokens: every target after the first token
    assert tau["tau_p5"] <= tau["tau_p95"]
    for key in ("spearman", "spearman_dro_optimal"):
        assert key in tau and (tau[key] is None or -1 <= tau[key] <= 1)
    assert set(tau["by_row"]) == set(ROWS) - {"ce"}
    clip = json.loads((out / "clip.json").read_text())
    for loss in ("clip", "sogclr", "isogclr", "isogclr_tempnet"):
        rec = clip[loss]
        assert _finite(rec["r1"]) and _finite(rec["zeroshot_top1"])
        assert rec["r1"] == pytest.approx((rec["img_r1"] + rec["txt_r1"]) / 2)
    tables = (out / "tables.md").read_text()
    assert "tempnet_dro (paper)" in tables and "tempnet_dro+uncentred" in tables and "isogclr_tempnet (paper)" in tables
    run = json.loads((out / "run.json").read_text())
    assert run["lm"]["rho"] == pytest.approx(math.log(256) - 2) and run["lm"]["rho"] < run["lm"]["log_V"]


@pytest.mark.slow
def test_lm_numbers_against_an_independent_computation(synthetic_run):
    """The floor from the language's own tables (a python loop over the saved documents), and val_ppl_tau
    from the Hugging Face wrapper's loss (labels in, CE of logits / tau out) instead of the demo's path."""
    from tempnet.data.synthetic_lm import SyntheticLanguage
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    out, _ = synthetic_run
    lm = json.loads((out / "lm.json").read_text())
    docs = np.load(out / "runs" / "lm_data" / "data" / "valid_tokens.npy")
    lang = SyntheticLanguage(256, 1, 0)
    entropies = []
    for doc in docs:
        for i in range(1, len(doc)):  # target doc[i] from context doc[i - 1]; doc[0] is a uniform draw
            p = lang.next_distribution([doc[i - 1]])
            entropies.append(-sum(q * math.log(q) for q in p if q > 0))
    assert lm["ce"]["true_entropy_ppl"] == pytest.approx(math.exp(np.mean(entropies)), rel=1e-9)

    for row in ("ce", "tempnet_dro"):
        model = tempnet_model_from_pretrained(str(out / "runs" / f"lm_{row}_seed0" / "final")).eval()
        ids = torch.as_tensor(docs)  # the documents, at the positions the packed training blocks give them
        labels = ids.clone()  # the wrapper shifts: every target doc[1:] is scored
        with torch.no_grad():
            terms = model(input_ids=ids, labels=labels).loss_terms
        assert math.exp(terms["ce"].item()) == pytest.approx(lm[row]["val_ppl_tau"], rel=1e-4), row


@pytest.mark.slow
def test_data_path_on_a_text_file(tmp_path):
    rng = np.random.default_rng(0)
    words = "the cat dog sat on a mat and ran to big small red house".split()
    text = "\n".join(" ".join(rng.choice(words, size=rng.integers(8, 20))) for _ in range(120))
    (tmp_path / "my.txt").write_text(text)
    out = tmp_path / "real"
    main(["--output-dir", str(out), "--data", str(tmp_path / "my.txt"), "--no-clip", "--steps", "8"])
    lm = json.loads((out / "lm.json").read_text())
    assert set(lm) == set(ROWS)
    for rec in lm.values():
        assert _finite(rec["val_ppl"]) and _finite(rec["val_ppl_tau"]) and rec["true_entropy_ppl"] is None
    tau = json.loads((out / "tau_entropy.json").read_text())
    assert not any(k.startswith("spearman") for k in tau)  # no truth: only the spread
    assert all(_finite(tau[k]) for k in ("tau_std", "tau_p5", "tau_p95", "n_positions"))
    assert not (out / "clip.json").exists() and not (out / "demo_tau_entropy.png").exists()
    assert (out / "demo_tau_sample.png").is_file() and (out / "demo_loss_curves.png").is_file()


def test_bad_data_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        main(["--output-dir", str(tmp_path / "x"), "--data", str(tmp_path / "nope.txt"), "--no-clip"])
    (tmp_path / "one.txt").write_text("only one line\n")
    with pytest.raises(ValueError, match="at least 2 non-empty lines"):
        main(["--output-dir", str(tmp_path / "y"), "--data", str(tmp_path / "one.txt"), "--no-clip"])


def test_bad_seed_count_exits_with_a_message():
    r = subprocess.run([sys.executable, "-m", "tempnet.demo", "--seeds", "0"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode != 0 and "--seeds must be >= 1" in r.stderr


def test_a_variant_row_joins_the_ablation_table_after_the_papers_row(tmp_path):
    from tempnet.demo.report import write_table_inputs
    from tempnet.eval.tables import build_tables, to_markdown

    lm = {row: {"val_ppl": 10.0 + i, "val_ppl_tau": 9.0 + i, "true_entropy_ppl": 5.0} for i, row in enumerate(ROWS)}
    write_table_inputs(tmp_path, lm, None)
    tables = {t.key: t for t in build_tables(tmp_path, paper=True)}
    assert "ablation" in tables and "llm" not in tables  # the variant is not sent to "Other LLM rows"
    names = [(r.name, r.source) for r in tables["ablation"].rows]
    assert names.index(("tempnet_dro+uncentred", "ours")) == names.index(("tempnet_dro", "paper")) + 1
    md = to_markdown([tables["ablation"]])
    assert "| ce |  | **10.00** | **9.00** | **5.00** |" in md  # the best (lowest) of our rows is bold


def test_wrapper_script_reaches_the_demo():
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(repo / "scripts" / "reproduce_tiny.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--quick" in r.stdout and "--data" in r.stdout and "--seeds" in r.stdout
