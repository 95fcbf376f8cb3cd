"""The LM objectives by name: one registry, one object per objective that every forward reads.

An objective is a temperature source plus a loss: the unit the paper's ablation table varies. Its
settings (`TempNetSettings`: rho or a target entropy, the tau range, TempNet's width, ...) are parsed
once, for one vocabulary, into an `Objective`; the full-logits loss (`Objective.loss`) and the fused one
(`tempnet.losses.fused.linear_tempnet_dro_loss(..., objective=...)`) both read it.

Adding an objective is one class and one entry:

    class GlobalTauCE(Objective):        # a learned global tau, plain tempered cross-entropy
        robust = False
        def build_head(self):
            s = self.settings
            return GlobalTemperature(s.tau, s.tau_min, s.tau_max)

    OBJECTIVES["global_ce"] = GlobalTauCE
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from tempnet.losses.lm import DEFAULT_RHO, objective_terms, rho_for_target_entropy
from tempnet.modules import FixedTemperature, GlobalTemperature, TempNet, check_tau_range

__all__ = ["TempNetSettings", "Objective", "OBJECTIVES", "objective_class", "LMObjective", "build_objective"]


@dataclass
class TempNetSettings:
    """The temperature head's numbers (also the `tempnet:` section of the LLM training configs)."""

    rho: Optional[float] = None
    """KL budget of the robust loss (used by "dro" and "tempnet_dro"); None: log V - target_entropy when that is
    set, else the paper's 8.0 (`tempnet.losses.lm.DEFAULT_RHO`)."""
    target_entropy: Optional[float] = None
    """The budget given as a target entropy H (nats) of the tempered distribution: rho = log V - H
    (`tempnet.losses.lm.rho_for_target_entropy`), the same target for any vocabulary size V."""
    tau: float = 1.0
    """The fixed tau of "ce", the initial tau of "dro"."""
    tau_min: float = 0.01
    """Lower end of the predicted tau."""
    tau_max: float = 2.0
    """Upper end of the predicted tau."""
    hidden_size: int = 256
    """M, TempNet's projection width."""
    dropout: float = 0.5
    """Dropout inside TempNet's projection."""
    pooling: str = "centred"
    """TempNet's pooling: "centred" (the paper's, (w - 1/M) * h) or "uncentred" (w * h: no saddle where h is
    constant across units, so tau becomes personal sooner; see tempnet.modules.TempNet)."""
    fused_loss: bool = True
    """With labels, compute the training loss by `tempnet.losses.fused.linear_tempnet_dro_loss` (logits chunk by
    chunk, no full-vocabulary tensor kept; the output's logits are then None). False: the full logits path."""

    def __post_init__(self):
        check_tau_range(self.tau_min, self.tau_max)
        if self.rho is not None and not self.rho >= 0:
            raise ValueError(f"rho (the KL budget) must be >= 0, got {self.rho}")
        if self.target_entropy is not None and not self.target_entropy > 0:
            raise ValueError(f"target_entropy must be > 0 (nats), got {self.target_entropy}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.pooling not in ("centred", "uncentred"):
            raise ValueError(f"pooling must be 'centred' or 'uncentred', got {self.pooling!r}")
        if self.hidden_size < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"need hidden_size >= 1 and 0 <= dropout < 1, got {self.hidden_size}, {self.dropout}")

    def budget(self, vocab_size: int) -> float:
        """rho for a vocabulary of this size: `rho`, or log V - `target_entropy`, or the paper's 8.0.

        A stored config holds both once resolved (a model records the rho its target gave); they must agree.
        """
        if self.target_entropy is None:
            return DEFAULT_RHO if self.rho is None else self.rho
        rho = rho_for_target_entropy(self.target_entropy, vocab_size)
        if self.rho is not None and not math.isclose(self.rho, rho, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(f"rho={self.rho} and target_entropy={self.target_entropy} disagree for vocabulary size "
                             f"{vocab_size} (log V - target_entropy = {rho:.6f}): give one of them")
        return rho


class Objective:
    """One LM objective for one vocabulary, its settings parsed once: what a forward needs.

    A subclass says whether its loss is the robust one (`robust`; else the cross-entropy of z / tau) and whether
    its temperature has trainable parameters (`trains_temperature`), and builds its head in `build_head()`.
    Attributes: settings, vocab_size, rho (the resolved KL budget, `TempNetSettings.budget`).
    """

    robust: ClassVar[bool] = False
    trains_temperature: ClassVar[bool] = True

    def __init__(self, settings: TempNetSettings, vocab_size: int):
        self.settings, self.vocab_size = settings, vocab_size
        self.rho = float(settings.budget(vocab_size))

    def build_head(self) -> nn.Module:
        """A fresh temperature head: logits [..., V] (read detached) -> tau [..., 1]."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor,
             ignore_index: int = -100) -> dict[str, torch.Tensor]:
        """{"loss", "ce", "tau_mean", "tau_min", "tau_max"} for logits [N, V], labels [N], tau [N, 1]
        (`tempnet.losses.lm.objective_terms`)."""
        return objective_terms(logits, labels, tau, self.robust, self.rho, ignore_index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, rho={self.rho}, {self.settings})"


class FixedTau(Objective):
    """A fixed tau, plain cross-entropy: the base model (tau 1) or a tempered one."""

    trains_temperature = False

    def build_head(self) -> nn.Module:
        return FixedTemperature(self.settings.tau)


class GlobalTauDRO(Objective):
    """One learned tau for every position, robust loss."""

    robust = True

    def build_head(self) -> nn.Module:
        s = self.settings
        return GlobalTemperature(s.tau, s.tau_min, s.tau_max)


class TempNetCE(Objective):
    """TempNet's per-position tau, cross-entropy of z / tau."""

    def build_head(self) -> nn.Module:
        s = self.settings
        return TempNet(self.vocab_size, s.hidden_size, s.tau_min, s.tau_max, s.dropout, s.pooling)


class TempNetDRO(TempNetCE):
    """TempNet's per-position tau, robust loss: the paper's method."""

    robust = True


#: The objectives by the names configs and checkpoints use; the ablation table's rows are (no TempNet, no DRO),
#: (DRO only), (TempNet only), (both).
OBJECTIVES: dict[str, type[Objective]] = {
    "ce": FixedTau,
    "dro": GlobalTauDRO,
    "tempnet_ce": TempNetCE,
    "tempnet_dro": TempNetDRO,
}


def objective_class(name: str) -> type[Objective]:
    """OBJECTIVES[name], or a ValueError listing the names."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


class LMObjective(nn.Module):
    """An objective's temperature head with its loss, as one module.

    forward(logits [N, V], labels [N]) -> dict with
        "loss":     the term to minimise (scalar, float32)
        "ce":       cross-entropy of z / tau, detached (the tempered model's NLL, for logging)
        "tau_mean", "tau_min", "tau_max": statistics over the non-ignored positions, detached
    The temperature head reads the detached logits, so it never sends gradient into the model.
    """

    def __init__(self, objective: Objective, ignore_index: int = -100):
        super().__init__()
        self.objective, self.temperature, self.ignore_index = objective, objective.build_head(), ignore_index
        self.robust, self.rho = objective.robust, objective.rho

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.objective.loss(logits, labels, self.temperature(logits.detach()), self.ignore_index)


def build_objective(name: str, vocab_size: int, **settings) -> LMObjective:
    """The objective `name` for a vocabulary of this size, as a module (temperature head + loss).

    settings: `TempNetSettings` fields (tau, rho, target_entropy, tau_min, tau_max, hidden_size, dropout, pooling).
    Trainers also call `tempnet.losses.lm.check_rho_vocab` (rho must stay below log V).
    """
    return LMObjective(objective_class(name)(TempNetSettings(**settings), vocab_size))
