"""Which temperature gets closest to the truth: the exact measures, the rules' paths, and the CLI contract."""

import json
import math

import numpy as np
import pytest
import torch

from tempnet.eval import calibration as C

# ---- the exact measures, against a hand computation and Monte Carlo --------------------------------------------
# Two positions over V = 3: a known truth p*, model logits z and a known tau per position.
P = np.array([[0.7, 0.2, 0.1], [0.0, 0.6, 0.4]])
Z = np.array([[2.0, 1.0, 0.0], [0.5, -1.0, 1.5]])  # position 2: the model's top token is not the truth's
TAU = np.array([0.5, 2.0])


def _q_by_hand(z, tau):
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def test_kl_ece_and_true_logprob_by_hand():
    logq = C.tempered_log_probs(Z, TAU)
    kl = C.kl_to_truth(P, logq)
    for i in range(2):
        q = _q_by_hand(Z[i], TAU[i])
        want = sum(p * math.log(p / qq) for p, qq in zip(P[i], q) if p > 0)
        assert kl[i] == pytest.approx(want, rel=1e-12)
        lp = C.expected_true_logprob(P, logq, floor=1e-3)[i]
        assert lp == pytest.approx(sum(qq * math.log(max(p, 1e-3)) for p, qq in zip(P[i], q)), rel=1e-12)
    # top-1 ECE: each position is its own bin here (confidences 0.867 and 0.528 with 15 bins)
    q0, q1 = _q_by_hand(Z[0], TAU[0]), _q_by_hand(Z[1], TAU[1])
    want = 0.5 * abs(max(q0) - P[0][int(np.argmax(q0))]) + 0.5 * abs(max(q1) - P[1][int(np.argmax(q1))])
    assert C.top1_calibration_error(P, logq) == pytest.approx(want, rel=1e-12)


def test_exact_measures_agree_with_monte_carlo():
    rng = np.random.default_rng(0)
    logq = C.tempered_log_probs(Z, TAU)
    n = 200_000
    for i in range(2):
        x = rng.choice(3, size=n, p=P[i])  # tokens of the source
        with np.errstate(divide="ignore"):
            terms = np.log(P[i][x]) - logq[i][x]
        est, se = terms.mean(), terms.std(ddof=1) / math.sqrt(n)
        assert abs(est - C.kl_to_truth(P, logq)[i]) < 4 * se
        y = rng.choice(3, size=n, p=np.exp(logq[i]))  # tokens sampled from q
        lp = np.log(np.maximum(P[i][y], 1e-3))
        assert abs(lp.mean() - C.expected_true_logprob(P, logq, 1e-3)[i]) < 4 * lp.std(ddof=1) / math.sqrt(n)


def test_kl_optimal_tau_is_the_minimum_over_a_dense_scan():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(20, 0.3), size=6)
    z = rng.normal(size=(6, 20)) * 3
    tau = C.kl_optimal_tau(p, z)
    best = C.kl_to_truth(p, C.tempered_log_probs(z, tau))
    for t in np.geomspace(0.01, 100, 2001):
        assert (best <= C.kl_to_truth(p, C.tempered_log_probs(z, np.full(6, t))) + 1e-10).all()
    assert C.gap_closed(1.0, 2.0, 1.0) == 1 and C.gap_closed(2.0, 2.0, 1.0) == 0 and C.gap_closed(1, 1, 1) is None


def test_fixed_tau_grid_is_41_log_spaced_values_from_0_1_to_10():
    from tempnet.demo.temperatures import FIXED_GRID

    grid = np.array(FIXED_GRID)
    assert len(grid) == 41 and grid[0] == 0.1 and grid[-1] == 10.0 and 1.0 in FIXED_GRID
    # equal steps in log tau: each value 10^(2/40) times the previous (up to the grid's 6-decimal rounding)
    assert np.allclose(grid[1:] / grid[:-1], 10 ** (2 / 40), rtol=1e-4, atol=0)


# ---- the rules through the real processors, on a tiny random model ------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from transformers import GPT2Config

    from tempnet.data.synthetic_lm import SyntheticLanguage
    from tempnet.demo import temperatures as T
    from tempnet.integrations.hf import tempnet_model_from_config

    torch.manual_seed(0)
    lang = SyntheticLanguage(256, 1, 0)
    model = tempnet_model_from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=258),
                                      objective="ce").eval()
    rho = math.log(256) - 2
    valid = T.make_split(lang, 4, 12, 1, 258, rho, 0.05, 5.0)
    test = T.make_split(lang, 4, 12, 2, 258, rho, 0.05, 5.0)
    return T, lang, model, valid, test


def test_every_rule_through_its_processor_and_the_optimum_below_all(tiny):
    from types import SimpleNamespace

    from tempnet.demo.lm import LMSetup
    from tempnet.integrations.decoding import EntropyDynamicTemperatureLogitsProcessor
    from tempnet.integrations.hidden_head import HiddenTemperatureHead

    T, lang, model, valid, test = tiny
    setup = LMSetup()
    corpus = SimpleNamespace(rho=math.log(256) - 2)
    head = HiddenTemperatureHead(16, 8, 0.05, 5.0)
    torch.nn.init.normal_(head.mlp[2].weight, std=1.0)  # a head whose tau varies
    rules = T.rules_for(lang, 258, corpus, setup, {"hidden_head": head}, model)
    res = T.compare_setting(model, rules, lang, valid, test, test.docs[:2, :1], 4, 0, head)
    assert set(res) == {"tau_1", "best_fixed", "dynatemp", "edt", "hidden_head", "oracle_per_position",
                        "dro_optimal_truth", "min_p", "top_n_sigma", "p_less"}
    # equal tuning budgets: every multi-parameter rule searched GRID_SIZE settings; the samplers sit at the
    # validation entropy of tau = 1 as closely as their grids allow
    assert {m: res[m]["grid_size"] for m in ("dynatemp", "edt", "min_p", "top_n_sigma", "p_less")} == dict.fromkeys(
        ("dynatemp", "edt", "min_p", "top_n_sigma", "p_less"), T.GRID_SIZE)
    for m in T.SAMPLERS:
        tuning = res[m]["tuning"]
        gaps = [abs(h - tuning["target_entropy"]) for h in tuning["valid_entropy"]]
        assert tuning["grid"][int(np.argmin(gaps))] == res[m]["params"]
    # the per-position optimum is the minimum on every position (up to the float32 rounding of processor outputs)
    assert T.oracle_excess(res) <= 1e-6
    assert res["best_fixed"]["valid_nll"] <= res["tau_1"]["valid_nll"] + 1e-12  # the grid holds tau = 1
    assert res["best_fixed"]["tuning"]["grid"] == list(T.FIXED_GRID)  # tuned over the documented grid
    assert res["oracle_per_position"]["gap_closed"] == pytest.approx(1) and res["tau_1"]["gap_closed"] == 0
    # the dynatemp row is the processor with its chosen parameters, applied to the model's logits
    z, _ = T.score_positions(model, test.docs)
    proc = EntropyDynamicTemperatureLogitsProcessor.from_range(*res["dynatemp"]["params"])
    tau = proc.temperature(z)[:, 0].double().numpy()
    assert res["dynatemp"]["tau_mean"] == pytest.approx(tau.mean(), rel=1e-6)
    logq = C.tempered_log_probs(z.double().numpy(), tau)
    assert res["dynatemp"]["kl_to_truth"] == pytest.approx(C.kl_to_truth(test.p, logq).mean(), rel=1e-5)
    # the hidden head's row: its tau from an independent forward (output_hidden_states, the state after ln_f)
    with torch.no_grad():
        h = model(input_ids=torch.as_tensor(test.docs), output_hidden_states=True).hidden_states[-1][:, :-1]
    assert res["hidden_head"]["tau_std"] > 1e-3
    tau_h = head(h)[..., 0].reshape(-1).detach().double().numpy()
    assert res["hidden_head"]["tau_mean"] == pytest.approx(tau_h.mean(), rel=1e-5)
    kl_h = C.kl_to_truth(test.p, C.tempered_log_probs(z.double().numpy(), tau_h)).mean()
    assert res["hidden_head"]["kl_to_truth"] == pytest.approx(kl_h, rel=1e-5)
    for rec in res.values():  # the Monte Carlo estimate of the sampled true log p agrees with its expectation
        assert abs(rec["sample_true_logprob_mc"] - rec["sample_true_logprob"]) < 5 * rec["sample_true_logprob_mc_se"] + 1e-6


def test_hidden_state_processor_in_generate_matches_a_separate_forward(tiny):
    from tempnet.integrations.decoding import HiddenStateTemperatureLogitsProcessor
    from tempnet.integrations.hidden_head import HiddenTemperatureHead

    _, _, model, _, test = tiny
    head = HiddenTemperatureHead(16, 8, 0.05, 5.0)
    torch.nn.init.normal_(head.mlp[2].weight, std=1.0)
    prompt = torch.as_tensor(test.docs[:2, :3])
    with HiddenStateTemperatureLogitsProcessor(head, model, record=True) as proc:
        out = model.generate(prompt, logits_processor=[proc], do_sample=True, top_k=0, max_new_tokens=5,
                             pad_token_id=0)
    used = torch.stack(proc.history, dim=1)  # [B, 5]
    with torch.no_grad():
        h = model(input_ids=out, output_hidden_states=True).hidden_states[-1]
    want = head(h[:, 2:-1])[..., 0]  # position t's state gives the tau of token t + 1
    assert torch.allclose(used, want, atol=1e-5)


def test_hidden_head_training_lowers_its_loss(tiny):
    from tempnet.integrations.hidden_head import train_hidden_head

    _, _, model, valid, _ = tiny
    head, losses = train_hidden_head(model, valid.docs, 60, 0.05, 5.0, lr=1e-2, batch_positions=64)
    assert losses[0] == pytest.approx(losses[0]) and np.mean(losses[-10:]) < losses[0]


# ---- the command line ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_temperatures_writes_the_contract(tmp_path):
    from tempnet.demo.run import main
    from tempnet.demo.temperatures import GRIDS, JOINT_METHODS, METHODS, SAMPLERS

    out = tmp_path / "cmp"
    main(["--compare-temperatures", "--output-dir", str(out), "--steps", "6", "--train-docs", "60", "--valid-docs",
          "3", "--budget", "test_docs=4", "--budget", "head_steps=5", "--budget", "prompts=2", "--budget", "new_tokens=3"])
    res = json.loads((out / "temperatures.json").read_text())
    assert set(res["frozen_ce"]) == set(METHODS) and set(res["joint_tempnet_dro"]) == set(JOINT_METHODS)
    for setting in ("frozen_ce", "joint_tempnet_dro"):
        for method, rec in res[setting].items():
            exact = ("kl_to_truth", "test_ppl", "ece") if method not in SAMPLERS else ("ece",)
            for key in exact + ("sample_true_logprob", "sample_entropy"):
                assert rec[key] is not None and math.isfinite(rec[key]), (setting, method, key)
            assert ("grid_size" in rec) == (method in GRIDS) and rec.get("grid_size", 0) == len(GRIDS.get(method, ()))
    assert res["settings"]["grid_sizes"] == {m: len(g) for m, g in GRIDS.items()}
    # harness.json: {setting: {method: {task: {metric: number}}}}, the Bayes ceiling beside the methods
    harness = json.loads((out / "harness.json").read_text())
    assert set(harness) == {"frozen_ce", "joint_tempnet_dro"}
    for setting, methods in harness.items():
        assert set(methods) == {m for m in res[setting] if m not in SAMPLERS} | {"bayes"}
        for method, tasks in methods.items():
            assert {t: set(m) for t, m in tasks.items()} == {"mc": {"acc", "acc_norm"}, "last_token": {
                "acc", "perplexity"}, "rolling": {"word_perplexity"}}, (setting, method)
            assert all(isinstance(v, float) and math.isfinite(v) for t in tasks.values() for v in t.values())
        # a positive tau keeps every position's argmax: last_token acc is one number for every rule
        assert len({rec["last_token"]["acc"] for m, rec in methods.items() if m != "bayes"}) == 1
    assert "identical in every row above" in (out / "harness.md").read_text()
    assert (out / "harness.png").stat().st_size > 0
    assert res["checks"]["oracle_excess_max"] <= 1e-6 and res["checks"]["best_fixed_minus_tau_1_valid_nll"] <= 1e-12
    assert (out / "temperatures.md").read_text().count("| tempnet_dro |") == 2
    assert (out / "temperatures.png").stat().st_size > 0
    assert (out / "runs" / "temperatures" / "frozen_tempnet_dro_seed0" / "final").is_dir()  # through the trainer


@pytest.mark.slow
def test_compare_temperatures_on_your_own_text(tmp_path):
    """--data: no truth, so harness.json holds frozen_ce with the methods that need none, on last_token and
    rolling of the text's held-out lines; through the command line, as a user runs it."""
    import subprocess
    import sys

    from tempnet.demo.temperatures import TEXT_METHODS

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "sun", "in"]
    text = tmp_path / "my.txt"
    text.write_text("".join(" ".join(rng.choice(words, size=int(rng.integers(6, 14)))) + "\n" for _ in range(400)))
    out = tmp_path / "mine"
    run = subprocess.run([sys.executable, "-m", "tempnet.demo", "--compare-temperatures", "--data", str(text),
                          "--output-dir", str(out), "--steps", "4", "--budget", "head_steps=3"],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    harness = json.loads((out / "harness.json").read_text())
    assert list(harness) == ["frozen_ce"] and set(harness["frozen_ce"]) == set(TEXT_METHODS)
    for method, tasks in harness["frozen_ce"].items():
        assert {t: set(m) for t, m in tasks.items()} == {"last_token": {"acc", "perplexity"},
                                                         "rolling": {"word_perplexity"}}, method
        assert all(math.isfinite(v) for t in tasks.values() for v in t.values())
    assert not (out / "temperatures.json").exists()  # no truth, no closeness to it
    missing = subprocess.run([sys.executable, "-m", "tempnet.demo", "--compare-temperatures", "--data",
                              str(tmp_path / "nope.txt"), "--output-dir", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: --data: no such file {tmp_path / 'nope.txt'}"]
    assert not (tmp_path / "x").exists()
