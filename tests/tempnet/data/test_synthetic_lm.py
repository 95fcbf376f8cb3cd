"""The synthetic language: its stated truth against samples, a direct numerical solve and the loss."""

import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize_scalar

from tempnet.data.synthetic_lm import SyntheticLanguage, dro_optimal_tau, kl_to_uniform
from tempnet.losses import dro_lm_loss

V = 64
RHO = math.log(V) - 1.5  # the tempered distribution at the optimum has entropy 1.5 nats


@pytest.fixture(scope="module")
def lang():
    return SyntheticLanguage(V, order=1, seed=3, support_sizes=(1, 2, 4, 8, 16, 32))


def test_tables_are_distributions_with_the_stated_supports(lang):
    p = lang.distributions(np.arange(lang.num_contexts))  # [C, V]
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert ((p > 0).sum(axis=1) == lang.support_size).all()
    assert set(lang.support_size.tolist()) == {1, 2, 4, 8, 16, 32}
    ent = -np.array([sum(q * math.log(q) for q in row if q > 0) for row in p])  # python loop
    assert np.allclose(lang.context_entropy, ent, atol=1e-12)
    assert lang.entropy([5, 7]) == pytest.approx(ent[7])  # the last `order` tokens are the context
    assert np.array_equal(lang.next_distribution([7]), p[7])


def test_samples_follow_the_stated_distributions(lang):
    docs = lang.sample_documents(4000, 101, np.random.default_rng(0))  # 400k transitions
    prev, nxt = docs[:, :-1].reshape(-1), docs[:, 1:].reshape(-1)
    counts = np.zeros((V, V))
    np.add.at(counts, (prev, nxt), 1.0)
    p = lang.distributions(np.arange(V))
    assert counts[p == 0].sum() == 0  # nothing outside a support, ever
    n = counts.sum(axis=1, keepdims=True)
    assert (n > 500).all()  # every context is visited (the chain is not trapped)
    # each cell's frequency is binomial(n, p): 6 standard deviations over ~600 cells
    z = np.abs(counts / n - p) / np.sqrt(np.maximum(p * (1 - p), 1e-12) / n)
    assert z[p > 0].max() < 6
    # E[-log p_true(y) | context] = H(context): the mean surprisal of a sample is an unbiased
    # estimate of the mean stated entropy of its positions; tolerance 5 standard errors
    truth = [lang.position_truth(d, RHO, 0.05, 5.0) for d in docs[:1000]]
    surprisal = -np.concatenate([t.logp for t in truth])
    ent = np.concatenate([t.entropy for t in truth])
    assert np.isfinite(surprisal).all()
    se = np.std(surprisal - ent) / math.sqrt(ent.size)
    assert abs(surprisal.mean() - ent.mean()) < 5 * se


def _expected_robust_loss(z: np.ndarray, p: np.ndarray, tau: float, rho: float) -> float:
    """E_{y ~ p} of the project's robust loss at one fixed tau (float64)."""
    zt = torch.tensor(z)[None].expand(V, V)
    per = dro_lm_loss(zt, torch.arange(V), torch.full((V,), tau, dtype=torch.float64), rho, reduction="none")
    return float((torch.tensor(p) * per).sum())


def test_tau_star_minimises_the_expected_robust_loss_with_a_floor(lang):
    floor = 1e-4
    tau_star = lang.context_tau_star(RHO, 0.05, 5.0, floor=floor)
    for c in range(0, V, 7):
        z, p = lang.true_logits(np.array([c]), floor)[0], lang.next_distribution([c])
        best = minimize_scalar(lambda t: _expected_robust_loss(z, p, t, RHO), bounds=(0.05, 5.0),
                               method="bounded", options={"xatol": 1e-7})
        # a bounded scalar minimiser on a smooth convex-looking curve: 1e-4 relative is loose for both
        assert tau_star[c] == pytest.approx(best.x, rel=1e-4, abs=1e-5), c
        if 0.05 < tau_star[c] < 5.0:
            assert kl_to_uniform(z, tau_star[c]) == pytest.approx(RHO, abs=1e-9)


def test_tau_star_restricted_to_the_support(lang):
    tau_star = lang.context_tau_star(RHO, 0.05, 5.0)  # floor=None: z = -inf outside the support
    k = lang.support_size
    small = np.log(k) <= math.log(V) - RHO  # KL never gets down to rho: the loss falls with tau
    assert (tau_star[small] == 5.0).all() and small.any() and (~small).any()
    for c in np.flatnonzero(~small)[:10]:
        z = lang.true_logits(np.array([c]))[0]
        root = brentq(lambda t: float(kl_to_uniform(z, t)) - RHO, 1e-3, 1e3, xtol=1e-12)
        assert tau_star[c] == pytest.approx(min(max(root, 0.05), 5.0), rel=1e-8)
    # a grid over tau of the label-free loss tau*logsumexp(z/tau) - tau*log V + tau*rho agrees
    c = int(np.flatnonzero(~small)[0])
    zs = lang.true_logits(np.array([c]))[0][lang.next_distribution([c]) > 0]
    grid = np.linspace(0.05, 5.0, 20001)
    loss = [t * np.log(np.exp(zs / t).sum()) - t * math.log(V) + t * RHO for t in grid]
    assert tau_star[c] == pytest.approx(grid[int(np.argmin(loss))], abs=2 * (grid[1] - grid[0]))


def test_dro_optimal_tau_clips_and_rejects_bad_input():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    tau = dro_optimal_tau(z, rho=1.0, tau_min=0.1, tau_max=2.0)
    assert tau[0] == 0.1  # uniform logits: KL = 0 < rho at every tau
    assert tau[1] == 2.0  # a near one-hot row: KL > rho up to tau_max
    with pytest.raises(ValueError, match="log V"):
        dro_optimal_tau(z, rho=math.log(4), tau_min=0.1, tau_max=2.0)
    with pytest.raises(ValueError, match="tau_min"):
        dro_optimal_tau(z, rho=1.0, tau_min=2.0, tau_max=1.0)
    with pytest.raises(ValueError, match="NaN"):
        dro_optimal_tau(np.array([[np.nan, 0.0]]), rho=0.1, tau_min=0.1, tau_max=2.0)


def test_position_truth_is_aligned_with_shifted_labels():
    lang = SyntheticLanguage(50, order=2, seed=1, support_sizes=(1, 3, 9, 27))
    doc = lang.sample(40, np.random.default_rng(2))
    truth = lang.position_truth(doc, rho=2.0, tau_min=0.1, tau_max=3.0, floor=1e-5)
    assert truth.entropy.shape == truth.tau_star.shape == truth.logp.shape == (39,)
    assert truth.entropy[0] == pytest.approx(math.log(50)) and truth.tau_star[0] == 0.1  # uniform start
    for i in range(1, 39):  # entry i predicts doc[i + 1] from (doc[i - 1], doc[i])
        p = lang.next_distribution(doc[i - 1:i + 1])
        assert truth.logp[i] == pytest.approx(math.log(p[doc[i + 1]]))
        assert truth.support_size[i] == (p > 0).sum()
        assert truth.tau_star[i] == pytest.approx(
            dro_optimal_tau(np.log(np.maximum(p, 1e-5)), 2.0, 0.1, 3.0), rel=1e-10)


def test_seeded_and_fast():
    start = time.perf_counter()
    a = SyntheticLanguage(256, order=1, seed=7)
    docs = a.sample_documents(2000, 512, np.random.default_rng(0))  # 1M tokens
    assert time.perf_counter() - start < 5.0
    b = SyntheticLanguage(256, order=1, seed=7)
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.support, b.support)
    assert np.array_equal(docs, b.sample_documents(2000, 512, np.random.default_rng(0)))
    assert not np.array_equal(a.support, SyntheticLanguage(256, order=1, seed=8).support)


def test_zipf_weights():
    lang = SyntheticLanguage(40, seed=0, support_sizes=(5,), weights="zipf", alpha=1.5)
    for c in range(3):
        p = np.sort(lang.next_distribution([c]))[::-1][:5]
        expected = np.arange(1, 6) ** -1.5
        assert np.allclose(p, expected / expected.sum())


def test_bad_arguments():
    with pytest.raises(ValueError, match="support_sizes"):
        SyntheticLanguage(10, support_sizes=(0, 2))
    with pytest.raises(ValueError, match="support_sizes"):
        SyntheticLanguage(10, support_sizes=(20,))
    with pytest.raises(ValueError, match="weights"):
        SyntheticLanguage(10, support_sizes=(2,), weights="uniform")
    with pytest.raises(ValueError, match="too large"):
        SyntheticLanguage(1000, order=3)
    lang = SyntheticLanguage(10, support_sizes=(2,))
    with pytest.raises(ValueError, match="context"):
        lang.next_distribution([])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        lang.position_truth([1, 12, 3], 1.0, 0.1, 2.0)


def test_text_corpus_and_tokenizer_map_one_to_one(tmp_path):
    from transformers import AutoTokenizer

    lang = SyntheticLanguage(30, seed=0, support_sizes=(1, 4, 16))
    paths = lang.write_corpus(tmp_path, n_train_docs=5, n_valid_docs=2, doc_len=12, seed=1)
    tok = AutoTokenizer.from_pretrained(lang.save_tokenizer(tmp_path / "tok"))
    train = np.load(paths["train_tokens"])
    lines = paths["train"].read_text().splitlines()
    assert train.shape == (5, 12) and len(lines) == 5 and np.load(paths["valid_tokens"]).shape == (2, 12)
    for line, doc in zip(lines, train):
        assert tok(line, add_special_tokens=True)["input_ids"] == doc.tolist()
    assert tok.eos_token_id == 30 and tok.pad_token_id == 30 and len(tok) == 32
    assert tok.decode(train[0]) == lines[0]
