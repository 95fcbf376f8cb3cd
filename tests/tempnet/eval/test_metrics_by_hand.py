"""Two metrics whose definitions a one-line slip would change without any other test noticing, against numbers
worked out by hand: CLIP_benchmark's mean per-class recall (tempnet.eval.clip_benchmark) and the exact top-1
ECE (tempnet.eval.calibration)."""

import math

import numpy as np
import pytest
import torch

from tempnet.eval.calibration import top1_calibration_error
from tempnet.eval.clip_benchmark import classification_metrics


def test_mean_per_class_recall_is_the_mean_of_the_classes_recalls_not_accuracy():
    # 5 classes, imbalanced: class 0 has 6 samples (5 right), class 1 has 2 (1 right), class 2 has 1 (0 right),
    # classes 3 and 4 never occur (a class absent from the labels does not count)
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    predicted = [0, 0, 0, 0, 0, 1, 1, 3, 0]
    second = [1, 1, 1, 1, 1, 0, 0, 1, 2]  # the runner-up: right for the last three samples
    logits = torch.zeros(9, 5)
    for i, (first, runner_up) in enumerate(zip(predicted, second)):
        logits[i, first], logits[i, runner_up] = 2.0, 1.0
    m = classification_metrics(logits, target)
    assert m["mean_per_class_recall"] == pytest.approx((5 / 6 + 1 / 2 + 0 / 1) / 3)  # 0.444
    assert m["acc1"] == pytest.approx(6 / 9)  # 0.667: accuracy weighs class 0 six times
    assert m["acc5"] == 1.0
    assert math.isnan(classification_metrics(logits[:, :4], target)["acc5"])  # fewer than 5 classes


def test_top1_ece_bins_positions_and_weighs_bins_by_their_share():
    # three positions over 2 tokens; confidences 0.90 and 0.92 share the bin [13/15, 14/15) of 15 bins, 0.60 is
    # alone in [9/15, 10/15). p*(top token) = 1.0, 0.8 and 0.5.
    q = np.array([[0.90, 0.10], [0.92, 0.08], [0.40, 0.60]])
    p = np.array([[1.0, 0.0], [0.8, 0.2], [0.5, 0.5]])
    shared = abs((0.90 + 0.92) / 2 - (1.0 + 0.8) / 2)  # |mean confidence - mean accuracy| = 0.01 (not 0.11)
    alone = abs(0.60 - 0.5)
    assert top1_calibration_error(p, np.log(q)) == pytest.approx(2 / 3 * shared + 1 / 3 * alone, rel=1e-12)  # 0.04
    # with 2 bins, 0.60, 0.90 and 0.92 all fall into [0.5, 1]; a confidence of exactly 1 stays in the last bin
    assert top1_calibration_error(p, np.log(q), n_bins=2) == pytest.approx(abs(2.42 / 3 - 2.3 / 3), rel=1e-12)
    certain = np.array([[1.0, 0.0]])
    with np.errstate(divide="ignore"):
        assert top1_calibration_error(np.array([[0.25, 0.75]]), np.log(certain)) == pytest.approx(0.75)
