"""Next-token losses with a temperature: the paper's robust (DRO) loss and the tempered cross-entropy.

For one position with logits z [V], label y, temperature tau and KL budget rho:

    L(z, y, tau) = tau * log( (1/V) * sum_k exp((z_k - z_y) / tau) ) + tau * rho
                 = tau * CE(z / tau, y) + tau * (rho - log V)

This is the dual of max_{p: KL(p, uniform) <= rho} E_p[z_k - z_y]: the tau minimising it is the one
where KL(softmax(z / tau) || uniform) = rho. Both z and tau receive gradients. The objectives by name
(a temperature source plus one of these losses) are in `tempnet.losses.objectives`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from tempnet import checks

__all__ = ["dro_lm_loss", "tempered_ce_loss", "objective_terms", "check_rho_vocab",
           "rho_for_target_entropy", "DEFAULT_RHO",
           "dro_optimal_tau", "kl_to_uniform", "entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _prepare(logits: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor | float, reduction: str):
    """Validate shapes and return (logits32 [N, V], labels [N], tau32 [N])."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N]={n}, got shape {tuple(labels.shape)} for logits {tuple(logits.shape)}")
    if not torch.is_tensor(tau):
        tau = torch.full((n,), float(tau), device=logits.device)
    if tau.shape not in ((n,), (n, 1)):
        raise ValueError(f"tau must be [N] or [N, 1] with N={n}, got shape {tuple(tau.shape)}")
    if checks.enabled() and torch.isnan(logits).any():  # a host sync: only while tempnet.checks is on
        raise ValueError("logits contain NaN")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half inputs are up-cast; float64 stays
    return logits.to(dtype), labels, tau.reshape(n).to(dtype)


def _reduce(per_position: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_position
    total = per_position.sum()
    return total if reduction == "sum" else total / valid.sum().clamp(min=1)


def tempered_ce_loss(logits: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor | float,
                     ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of z / tau: the plain objective with a (possibly per-position) temperature.

    Args:
        logits: [N, V]; labels: [N]; tau: [N], [N, 1] or a float.
    Returns:
        a scalar, or [N] (zero at ignored positions) with reduction="none". float32.
    """
    z, labels, tau = _prepare(logits, labels, tau, reduction)
    ce = F.cross_entropy(z / tau[:, None], labels, ignore_index=ignore_index, reduction="none")  # [N]
    return _reduce(ce, labels != ignore_index, reduction)


def dro_lm_loss(logits: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor | float, rho: float,
                ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """The robust next-token loss tau * CE(z / tau, y) + tau * (rho - log V) (Qiu et al., ICML 2024, Sec. 3).

    Positions whose label is `ignore_index` contribute nothing (neither the CE term nor the
    tau * (rho - log V) term), and the mean is over the remaining positions.

    Args:
        logits: [N, V] in any float dtype; labels: [N]; tau: [N] or [N, 1] (or a float); rho >= 0.
    Returns:
        a scalar, or [N] (zero at ignored positions) with reduction="none"; float32 (float64 for
        float64 inputs).
    """
    _check_rho(rho)
    z, labels, tau = _prepare(logits, labels, tau, reduction)
    valid = labels != ignore_index
    ce = F.cross_entropy(z / tau[:, None], labels, ignore_index=ignore_index, reduction="none")  # [N]
    return _reduce(_robust_from_ce(ce, tau, rho, z.shape[-1], valid), valid, reduction)


def _check_rho(rho: float) -> None:
    if not rho >= 0:
        raise ValueError(f"rho (the KL budget) must be >= 0, got {rho}")


def _robust_from_ce(ce: torch.Tensor, tau: torch.Tensor, rho: float, vocab_size: int,
                    valid: torch.Tensor) -> torch.Tensor:
    """Per position tau * CE(z / tau, y) + tau * (rho - log V), zero where the label is ignored. [N]"""
    return tau * (ce + (rho - math.log(vocab_size))) * valid


def objective_terms(logits: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor, robust: bool, rho: float,
                    ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """The objectives' loss dict for a tau already predicted (`tempnet.losses.objectives.Objective.loss`):
    the robust loss when `robust`, else the cross-entropy of z / tau; ce and tau statistics for logging.

    One pass over the logits serves both the loss and the logged cross-entropy.
    """
    per_ce = tempered_ce_loss(logits, labels, tau, ignore_index, reduction="none")  # [N], 0 where ignored
    valid = labels != ignore_index
    ce = _reduce(per_ce, valid, "mean")
    if robust:
        _check_rho(rho)
        per_position = _robust_from_ce(per_ce, tau.reshape(-1).to(per_ce.dtype), rho, logits.shape[-1], valid)
        loss = _reduce(per_position, valid, "mean")
    else:
        loss = ce
    t = tau.detach().reshape(-1)[valid] if valid.any() else tau.detach().reshape(-1)
    return {"loss": loss, "ce": ce.detach(), "tau_mean": t.mean(), "tau_min": t.min(), "tau_max": t.max()}


def check_rho_vocab(rho: float, vocab_size: int, allow_large_rho: bool = False) -> None:
    """The KL ball must bind: KL(p || uniform) <= log V, so rho >= log V makes the DRO constraint vacuous
    (the robust loss becomes the max loss and tau runs to tau_min). An error, or a warning when the
    caller explicitly allows it."""
    _check_rho(rho)
    log_v = math.log(vocab_size)
    if rho >= log_v:
        message = (f"rho={rho} >= log V = {log_v:.3f} (vocabulary size V={vocab_size}): KL(p || uniform) <= log V, "
                   f"so the DRO constraint is vacuous; choose rho < {log_v:.3f}")
        if not allow_large_rho:
            raise ValueError(message + " (or set tempnet.allow_large_rho=true to proceed anyway)")
        warnings.warn(message, stacklevel=3)


#: The paper's KL budget of the LLM experiments (8.0 to 10 for vocabularies of 32k to 50k tokens).
DEFAULT_RHO = 8.0


def rho_for_target_entropy(target_entropy: float, vocab_size: int) -> float:
    """The KL budget rho = log V - H that asks the same of every vocabulary.

    KL(p || uniform) = log V - H(p), so the robust loss's ball KL(p || uniform) <= rho is the set of
    distributions with entropy H(p) >= log V - rho: rho fixes a target entropy log V - rho (nats), and
    carrying rho unchanged to a larger vocabulary asks for a flatter distribution. The paper's rho 8.5 at
    V = 32000 is a target of 1.87 nats; Llama 3 (V = 128256) needs rho 9.89 for the same target.
    """
    log_v = math.log(vocab_size)
    if not 0 < target_entropy <= log_v:
        raise ValueError(f"target_entropy must lie in (0, log V = {log_v:.3f}] (vocabulary size V={vocab_size}), "
                         f"got {target_entropy}")
    return log_v - target_entropy


# ---- the DRO optimum of fixed logits (float64 numpy): targets for tests, the synthetic language and the demo ----
def np_log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float64 logits [..., V]; -inf entries stay -inf (probability 0)."""
    top = z.max(axis=-1, keepdims=True)
    shifted = z - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(logits) row by row: [..., V] -> [...]. -inf logits allowed."""
    logq = np_log_softmax(np.asarray(logits, dtype=np.float64))
    q = np.exp(logq)
    return np.maximum(-np.where(q > 0, q * np.where(q > 0, logq, 0.0), 0.0).sum(axis=-1), 0.0)


def kl_to_uniform(logits: np.ndarray, tau: np.ndarray | float) -> np.ndarray:
    """KL(softmax(z / tau) || uniform over V) = log V - H(softmax(z / tau)). z [..., V], tau [...] -> [...]."""
    z = np.asarray(logits, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    return math.log(z.shape[-1]) - entropy(z / tau[..., None])


def dro_optimal_tau(logits: np.ndarray, rho: float, tau_min: float, tau_max: float, iters: int = 60) -> np.ndarray:
    """The tau in [tau_min, tau_max] minimising the robust next-token loss of logits z, row by row.

    KL(softmax(z/tau) || uniform) decreases in tau, and the loss's tau-derivative is rho - KL, so
    the minimiser is the root of KL = rho, found by bisection in log tau; rows whose KL stays above
    rho on the whole range get tau_max, rows whose KL stays below it get tau_min.

    Args:
        logits: [..., V] (float; -inf marks tokens outside the support); rho in (0, log V).
        tau_min, tau_max: the clipping range, 0 < tau_min < tau_max.
        iters: bisection steps (60 halvings of the log range: far below float64 resolution).
    Returns:
        tau [...] float64.
    """
    z = np.asarray(logits, dtype=np.float64)
    v = z.shape[-1]
    if not 0 < rho < math.log(v):
        raise ValueError(f"rho must lie in (0, log V) = (0, {math.log(v):.4f}) for V={v}, got {rho}")
    if not 0 < tau_min < tau_max:
        raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
    if np.isnan(z).any():
        raise ValueError("logits contain NaN")
    shape = z.shape[:-1]
    lo = np.full(shape, math.log(tau_min))
    hi = np.full(shape, math.log(tau_max))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_peaked = kl_to_uniform(z, np.exp(mid)) > rho  # KL above rho: tau must grow
        lo = np.where(too_peaked, mid, lo)
        hi = np.where(too_peaked, hi, mid)
    tau = np.exp(0.5 * (lo + hi))
    tau = np.where(kl_to_uniform(z, np.full(shape, tau_max)) >= rho, tau_max, tau)
    return np.where(kl_to_uniform(z, np.full(shape, tau_min)) <= rho, tau_min, tau)
