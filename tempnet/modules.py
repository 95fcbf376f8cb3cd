"""Temperature predictors: the paper's TempNets and the two non-network baselines.

Every module here maps model outputs to a temperature and nothing else: the losses in
`tempnet.losses` consume tau, the modules only predict it. All math runs in float32 whatever
the dtype of the inputs or parameters (the released checkpoints store TempNet in fp16).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tempnet import checks
from tempnet.distributed import gather_with_grad
from tempnet.errors import ConfigError

__all__ = ["TempNet", "PrototypeTempNet", "TempNetPair", "GlobalTemperature", "FixedTemperature", "Float32Linear",
           "check_tau_range"]


def check_tau_range(tau_min: float, tau_max: float) -> None:
    """Raise a ValueError unless 0 < tau_min < tau_max."""
    if not tau_min > 0:
        raise ValueError(f"tau_min must be positive, got tau_min={tau_min}")
    if not tau_min < tau_max:
        raise ValueError(f"tau_min must be smaller than tau_max, got tau_min={tau_min} >= tau_max={tau_max}")


def _check_finite(x: torch.Tensor, what: str) -> None:
    """A value check (a host sync): only while `tempnet.checks` is on."""
    if checks.enabled() and torch.isnan(x).any():
        raise ValueError(f"{what} contain NaN")


def _squash(r: torch.Tensor, tau_min: float, tau_max: float) -> torch.Tensor:
    """Output layer of both TempNets: tau = (tau_max - tau_min) * sigmoid(r) + tau_min."""
    return (tau_max - tau_min) * torch.sigmoid(r) + tau_min


class Float32Linear(nn.Linear):
    """nn.Linear that computes in float32 whatever its parameters' dtype (fp16 released weights,
    a bf16 DeepSpeed engine). Called as a module, so ZeRO-3 gathers its weights on entry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


class TempNet(nn.Module):
    """The LLM TempNet: one temperature per token position, predicted from that position's logits.

    transformation  x = normalize_L2(z - max(z))
    projection      h = Linear(V, M) -> Sigmoid -> Dropout -> Linear(M, M)
    pooling         w = softmax(h / exp(s)),  r = Linear(M, 1)((w - 1/M) * h)
    output          tau = (tau_max - tau_min) * sigmoid(r) + tau_min

    Subtracting the max makes the input identical whether or not the caller already shifted its
    logits (training vs. generation). Parameter names match the authors' released checkpoints.

    Pooling variants (`pooling`; the parameters, their names and init are the same for both):
        "centred"    the paper's r = Linear(M, 1)((w - 1/M) * h). Its per-row part
                     sum_m (w_m - 1/M) h_m = M * Cov_m(w, h) is >= 0 and vanishes, with zero gradient
                     in h, wherever h is constant across the M units (then w = 1/M). While TempNet
                     first lowers its too-high initial tau for every row, the cheapest way is to
                     flatten h, which drives the network into that saddle: tau stays one global value
                     for hundreds to thousands of steps (scripts/study_tempnet_dynamics.py).
        "uncentred"  r = Linear(M, 1)(w * h), the w-weighted mean of h: no saddle at constant h, so
                     tau becomes personal within ~100 steps on the synthetic language. Not the paper's
                     module: the released checkpoints were trained with "centred".

    Args:
        vocab_size: V, the size of the logits this TempNet reads.
        hidden_size: M, the width of the projection.
        tau_min, tau_max: the range of the predicted temperature.
        dropout: dropout probability inside the projection.
        pooling: "centred" (the paper's, default) or "uncentred" (see above).
    """

    POOLINGS = ("centred", "uncentred")

    def __init__(self, vocab_size: int, hidden_size: int = 256, tau_min: float = 0.01, tau_max: float = 2.0,
                 dropout: float = 0.5, pooling: str = "centred"):
        super().__init__()
        if vocab_size < 2 or hidden_size < 1:
            raise ValueError(f"need vocab_size >= 2 and hidden_size >= 1, got {vocab_size} and {hidden_size}")
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        check_tau_range(tau_min, tau_max)
        self.vocab_size, self.hidden_size, self.pooling = vocab_size, hidden_size, pooling
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.proj = nn.Sequential(
            Float32Linear(vocab_size, hidden_size), nn.Sigmoid(), nn.Dropout(dropout),
            Float32Linear(hidden_size, hidden_size),
        )
        # log of the pooling temperature, init log 1; shape [1] as in the released checkpoints (and
        # DeepSpeed / FSDP reject 0-dim parameters)
        self.scaler = nn.Parameter(torch.zeros(1))
        self.last = Float32Linear(hidden_size, 1)
        self.reset_output_layer()

    def reset_output_layer(self) -> None:
        """Initialise the pooling read-out to weight 1, bias 0 (as in the paper)."""
        with torch.no_grad():
            self.last.weight.fill_(1.0)
            self.last.bias.zero_()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., V] (any float dtype) -> tau [..., 1] float32."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"TempNet was built for vocabulary size {self.vocab_size} but got logits with last dimension "
                f"{logits.shape[-1]}"
            )
        _check_finite(logits, "logits given to TempNet")
        with torch.autocast(logits.device.type, enabled=False):
            z = logits.float()
            x = F.normalize(z - z.amax(dim=-1, keepdim=True), dim=-1)  # [..., V]
            h = self.proj(x)  # [..., M]
            w = torch.softmax(h / self.scaler.float().exp(), dim=-1)
            if self.pooling == "centred":
                w = w - 1.0 / self.hidden_size
            r = self.last(w * h)  # [..., 1]
            return _squash(r, self.tau_min, self.tau_max)

    def extra_repr(self) -> str:
        pooling = "" if self.pooling == "centred" else f", pooling={self.pooling}"
        return f"vocab_size={self.vocab_size}, tau_range=[{self.tau_min}, {self.tau_max}]{pooling}"


class PrototypeTempNet(nn.Module):
    """The CLIP TempNet: one temperature per image (or text) from its embedding.

    x = Dropout(Sigmoid(Linear(d, d)(f)));  p = x @ normalize(prototypes)^T   [B, M]
    w = softmax(p / exp(s));  r = Linear(M, 1)((w - 1/M) * sigmoid(p));  tau = squash(r)

    Args:
        feature_dim: d, the embedding size.
        num_prototypes: M.
        tau_min, tau_max: the range of the predicted temperature.
        dropout: dropout probability after the projection.
    """

    def __init__(self, feature_dim: int, num_prototypes: int = 256, tau_min: float = 0.005, tau_max: float = 0.05,
                 dropout: float = 0.5):
        super().__init__()
        if feature_dim < 1 or num_prototypes < 1:
            raise ValueError(f"need feature_dim >= 1 and num_prototypes >= 1, got {feature_dim}, {num_prototypes}")
        check_tau_range(tau_min, tau_max)
        self.feature_dim, self.num_prototypes = feature_dim, num_prototypes
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.proj = Float32Linear(feature_dim, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, feature_dim) / math.sqrt(feature_dim))
        self.scaler = nn.Parameter(torch.full((1,), math.log(0.01)))
        self.linear_1 = Float32Linear(num_prototypes, 1)
        with torch.no_grad():
            self.linear_1.weight.fill_(1.0)
            self.linear_1.bias.zero_()

    @torch.no_grad()
    def init_prototypes(self, embeddings: torch.Tensor) -> None:
        """Copy embeddings [M, d] into the prototypes (the paper uses the other modality's first batch)."""
        if embeddings.shape != self.prototypes.shape:
            raise ValueError(
                f"init_prototypes needs embeddings of shape {tuple(self.prototypes.shape)} "
                f"(num_prototypes, feature_dim), got {tuple(embeddings.shape)}"
            )
        self.prototypes.copy_(embeddings.to(self.prototypes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, d] -> tau [B] float32."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"PrototypeTempNet expects features [B, {self.feature_dim}], got {tuple(features.shape)}")
        _check_finite(features, "features given to PrototypeTempNet")
        with torch.autocast(features.device.type, enabled=False):
            x = self.dropout(torch.sigmoid(self.proj(features)))  # [B, d]
            p = x @ F.normalize(self.prototypes.float(), dim=-1).t()  # [B, M]
            w = torch.softmax(p / self.scaler.float().exp(), dim=-1)
            r = self.linear_1((w - 1.0 / self.num_prototypes) * torch.sigmoid(p))  # [B, 1]
            return _squash(r, self.tau_min, self.tau_max).squeeze(-1)


class TempNetPair(nn.Module):
    """The paper's CLIP TempNets: (image [B, E], text [B, E]) -> (tau_image [B], tau_text [B]).

    Both PrototypeTempNets read their inputs with the gradient stopped (they learn from the loss's
    temperature term only). The paper's prototype rule, `init_from_first_batch`: each TempNet's M
    prototypes are the first M pairs of the other modality in the run's first global batch.
    `initialised` is a buffer, so a resumed run does not re-initialise them.

    Args:
        embed_dim: E, the embedding size; num_prototypes: M; tau_min, tau_max, dropout: as PrototypeTempNet.
        prototype_init: what the first batch's prototypes copy: "features" (the embeddings given to
            init_from_first_batch) or "projections" (its `projections()`: the authors' unnormalised projections).
    """

    PROTOTYPE_INITS = ("features", "projections")

    def __init__(self, embed_dim: int, num_prototypes: int = 256, tau_min: float = 0.005, tau_max: float = 0.05,
                 dropout: float = 0.5, prototype_init: str = "features"):
        super().__init__()
        if prototype_init not in self.PROTOTYPE_INITS:
            raise ValueError(f"prototype_init must be one of {self.PROTOTYPE_INITS}, got {prototype_init!r}")
        self.prototype_init = prototype_init
        self.image = PrototypeTempNet(embed_dim, num_prototypes, tau_min, tau_max, dropout)
        self.text = PrototypeTempNet(embed_dim, num_prototypes, tau_min, tau_max, dropout)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_prototypes(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        """Prototypes from the first M rows of a (global) batch: image TempNet from texts, text TempNet from images."""
        m = self.image.num_prototypes
        if image_features.shape[0] < m:
            raise ConfigError(f"initialising {m} prototypes needs a global batch of at least {m} pairs, got "
                             f"{image_features.shape[0]}; lower tempnet.num_prototypes or raise the batch size")
        self.image.init_prototypes(text_features[:m].float())
        self.text.init_prototypes(image_features[:m].float())
        self.initialised.fill_(True)

    @torch.no_grad()
    def init_from_first_batch(self, image_features: torch.Tensor, text_features: torch.Tensor,
                              projections: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called with every training batch (each rank's [B, E] embeddings); until `initialised`, sets the
        prototypes from the global batch (gathered over ranks). `projections()` gives the batch's unnormalised
        projections; it is called only for prototype_init="projections" (a second, gradient-free forward)."""
        if bool(self.initialised):
            return
        if self.prototype_init == "projections":
            image_features, text_features = projections()
        self.init_prototypes(gather_with_grad(image_features.detach().float()),
                             gather_with_grad(text_features.detach().float()))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image_features.detach()), self.text(text_features.detach())


class GlobalTemperature(nn.Module):
    """One learnable temperature shared by every position (the ablation's "DRO without TempNet").

    Parameterised like TempNet's output layer, tau = squash(r) with a learned scalar r, so it
    stays inside [tau_min, tau_max]. forward(logits [..., V]) -> tau [..., 1] float32.
    """

    def __init__(self, tau_init: float = 1.0, tau_min: float = 0.01, tau_max: float = 2.0):
        super().__init__()
        check_tau_range(tau_min, tau_max)
        if not tau_min < tau_init < tau_max:
            raise ValueError(f"tau_init={tau_init} must lie strictly inside ({tau_min}, {tau_max})")
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        frac = (tau_init - tau_min) / (tau_max - tau_min)
        self.logit = nn.Parameter(torch.full((1,), math.log(frac / (1.0 - frac))))  # [1]: ZeRO / FSDP-safe

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        tau = _squash(self.logit.float(), self.tau_min, self.tau_max)
        return tau.expand(*logits.shape[:-1], 1)


class FixedTemperature(nn.Module):
    """A constant temperature (the usual tau = 1 baseline). forward(logits [..., V]) -> tau [..., 1]."""

    def __init__(self, tau: float = 1.0):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.full((*logits.shape[:-1], 1), self.tau, dtype=torch.float32, device=logits.device)
