"""The harness figure draws whatever a seeded run averages to, blow-ups of a temperature rule included."""

import json
import math

from tempnet.demo.harness_report import plot_harness


def test_plot_survives_an_infinite_spread_and_an_infinite_mean(tmp_path):
    """EDT's perplexity in a 3-seed run: one seed's 1e254 gives a finite mean with an infinite std, another's
    inf an infinite mean (the figure was then never written: matplotlib cannot lay out an infinite error bar)."""
    cell = {"acc": 0.6, "acc_std": 0.03}
    harness = {"frozen_ce": {"tau_1": {"mc": {**cell, "acc_norm": 0.6, "acc_norm_std": 0.02},
                                       "last_token": {"acc": 0.4, "perplexity": 7.2, "perplexity_std": 0.5},
                                       "rolling": {"word_perplexity": 11.4, "word_perplexity_std": 0.5}},
                             "edt": {"mc": {**cell, "acc_norm": 0.6, "acc_norm_std": 0.05},
                                     "last_token": {"acc": 0.4, "perplexity": 4.97e254, "perplexity_std": math.inf},
                                     "rolling": {"word_perplexity": math.inf, "word_perplexity_std": math.nan}},
                             "bayes": {"mc": {"acc": 0.9, "acc_norm": 0.9},
                                       "last_token": {"acc": 0.41, "perplexity": 6.5},
                                       "rolling": {"word_perplexity": 6.9}}}}
    json.dumps(harness)  # the shape harness.json has
    path = plot_harness(harness, tmp_path / "harness.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
