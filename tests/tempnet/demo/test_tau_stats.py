"""The demo's tau statistics (tempnet.demo.lm.tau_stats) against loops: the spread, the percentiles by
their linear-interpolation definition and Spearman's correlation from hand-made ranks. (tests/test_demo.py
runs the demo end to end; there only the ranges of these numbers can be seen.)"""

import math

import numpy as np
import pytest

from tempnet.demo.lm import tau_stats


def _percentile(values, q):
    """numpy's default ("linear"): the value at position q/100 * (n - 1) of the sorted values."""
    s = sorted(values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _spearman(a, b):
    """Pearson correlation of the ranks (no ties in the test's data), by loops."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_tau_stats_match_loops():
    rng = np.random.default_rng(0)
    tau = rng.uniform(0.2, 2.0, 37)
    entropy = 0.5 * tau + rng.normal(0, 0.3, 37)  # correlated, not perfectly
    tau_star = -tau + rng.normal(0, 0.5, 37)  # anti-correlated
    dro = rng.uniform(0, 1, 37)
    got = tau_stats({"tau": tau, "tau_dro_optimal": dro}, {"entropy": entropy, "tau_star": tau_star})
    t = tau.tolist()
    mean = sum(t) / len(t)
    want = {"n_positions": 37, "tau_mean": mean, "tau_std": math.sqrt(sum((x - mean) ** 2 for x in t) / len(t)),
            "tau_p5": _percentile(t, 5), "tau_p95": _percentile(t, 95),
            "spearman": _spearman(t, entropy.tolist()), "spearman_dro_optimal": _spearman(t, dro.tolist()),
            "spearman_true_tau_star": _spearman(t, tau_star.tolist())}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert want["spearman"] > 0.3 and want["spearman_true_tau_star"] < -0.3  # the signs are told apart


def test_constant_tau_has_no_correlation_and_no_truth_no_spearman():
    flat = tau_stats({"tau": np.full(5, 0.7)}, {"entropy": np.arange(5.0), "tau_star": np.arange(5.0)})
    assert flat["spearman"] is None and flat["spearman_true_tau_star"] is None and flat["tau_std"] == 0.0
    assert flat["spearman_dro_optimal"] is None  # not computed without the DRO-optimal taus
    assert "spearman" not in tau_stats({"tau": np.arange(4.0)}, None)
