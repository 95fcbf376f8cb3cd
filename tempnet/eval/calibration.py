"""How close a tempered next-token distribution is to a known truth: exact measures (float64 numpy).

For one position with true distribution p* [V] and model logits z [V], a temperature tau gives
q = softmax(z / tau). Every function takes the log-probabilities log q [P, V] (whatever produced them: a
fixed tau, a logits processor, a learned head), and the truth p* [P, V] (rows summing to 1, zeros
allowed):

    kl_to_truth           KL(p* || q) per position (the expected excess log-loss of q on the source's tokens)
    kl_optimal_tau        the tau minimising KL(p* || softmax(z / tau)) per position (the best any per-token
                          temperature can do on these logits): convex in 1 / tau, found by bisection
    top1_calibration_error  expected calibration error of the top-1 token, exact: the accuracy of a bin is the
                          mean true probability of the predicted token, not a sampled hit rate
    expected_true_logprob E_{x ~ q}[log max(p*(x), floor)] per position (sampling quality; the floor makes a
                          token the source never emits finite)
    gap_closed            the share of the gap between tau = 1 and the per-position optimum a method closes
"""

from __future__ import annotations

import math

import numpy as np

from tempnet.losses.lm import entropy, np_log_softmax

__all__ = ["log_softmax", "tempered_log_probs", "kl_to_truth", "kl_optimal_tau", "top1_calibration_error",
           "expected_true_logprob", "entropy_of_log_probs", "gap_closed", "OPTIMAL_TAU_RANGE", "entropy"]

#: The range searched by `kl_optimal_tau`: wide enough to hold every temperature the compared methods
#: produce (the decoding baselines clamp at 1e-4), so the optimum found is the minimum over all of them.
OPTIMAL_TAU_RANGE = (1e-4, 1e4)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (-inf entries stay -inf)."""
    return np_log_softmax(np.asarray(z, dtype=np.float64))


def tempered_log_probs(z: np.ndarray, tau) -> np.ndarray:
    """log softmax(z / tau): z [P, V], tau a float or [P] -> [P, V] float64."""
    tau = np.broadcast_to(np.asarray(tau, dtype=np.float64), np.shape(z)[:-1])
    return log_softmax(np.asarray(z, dtype=np.float64) / tau[..., None])


def _check(p: np.ndarray, logq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, logq = np.asarray(p, dtype=np.float64), np.asarray(logq, dtype=np.float64)
    if p.shape != logq.shape:
        raise ValueError(f"truth {p.shape} and log q {logq.shape} must have the same shape [P, V]")
    if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-6):
        raise ValueError("the truth must be probability rows (non-negative, summing to 1)")
    return p, logq


def kl_to_truth(p: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p* || q) = sum_x p*(x) (log p*(x) - log q(x)) per row: [P, V] x [P, V] -> [P] (inf if q misses p*)."""
    p, logq = _check(p, logq)
    pos = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pos, p * (np.log(np.where(pos, p, 1.0)) - logq), 0.0)
    return terms.sum(-1)


def kl_optimal_tau(p: np.ndarray, z: np.ndarray, tau_range: tuple[float, float] = OPTIMAL_TAU_RANGE,
                   iters: int = 100) -> np.ndarray:
    """argmin_tau KL(p* || softmax(z / tau)) per row, over `tau_range`: [P, V] x [P, V] -> [P].

    With beta = 1 / tau, KL = -beta E_p*[z] + logsumexp(beta z) + const is convex in beta, and its derivative
    E_q[z] - E_p*[z] increases with beta; the root (q's mean logit = the truth's) is found by bisection in
    log beta, clipped to the range (a row whose logits are constant on p*'s support gets the smallest tau when
    p* puts its mass on the top logits, the largest when on the bottom ones). z must be finite.
    """
    p, z = _check(p, z)
    if not np.isfinite(z).all():
        raise ValueError("kl_optimal_tau needs finite logits")
    lo_tau, hi_tau = tau_range
    target = (p * z).sum(-1)  # E_p*[z]
    lo = np.full(target.shape, -math.log(hi_tau))  # log beta
    hi = np.full(target.shape, -math.log(lo_tau))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        q = np.exp(log_softmax(z * np.exp(mid)[:, None]))
        below = (q * z).sum(-1) < target  # E_q[z] too small: beta must grow (tau fall)
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.exp(-0.5 * (lo + hi))


def top1_calibration_error(p: np.ndarray, logq: np.ndarray, n_bins: int = 15) -> float:
    """Top-1 expected calibration error, exact under the truth: positions binned by confidence max q (equal
    widths on [0, 1]); a bin's error is |mean confidence - mean p*(argmax q)|, weighted by its share."""
    p, logq = _check(p, logq)
    top = logq.argmax(-1)
    confidence = np.exp(logq[np.arange(len(top)), top])
    accuracy = p[np.arange(len(top)), top]
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.mean() * abs(confidence[sel].mean() - accuracy[sel].mean())
    return float(total)


def expected_true_logprob(p: np.ndarray, logq: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """E_{x ~ q}[log max(p*(x), floor)] per row [P]: the true log-probability of a token sampled from q."""
    p, logq = _check(p, logq)
    if not 0 < floor < 1:
        raise ValueError(f"floor must lie in (0, 1), got {floor}")
    return (np.exp(logq) * np.log(np.maximum(p, floor))).sum(-1)


def entropy_of_log_probs(logq: np.ndarray) -> np.ndarray:
    """H(q) in nats per row from log q [P, V] -> [P]."""
    return entropy(np.asarray(logq, dtype=np.float64))


def gap_closed(kl_method: float, kl_tau1: float, kl_optimum: float) -> float | None:
    """(KL(tau = 1) - KL(method)) / (KL(tau = 1) - KL(optimum)): 1 = the per-position optimum, 0 = no better
    than tau = 1, negative = worse; None when tau = 1 is already optimal (no gap)."""
    gap = kl_tau1 - kl_optimum
    return None if gap <= 1e-12 else (kl_tau1 - kl_method) / gap
