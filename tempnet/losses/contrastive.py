"""Global contrastive losses for bimodal (image-text) training: CLIP, CyCLIP, SogCLR, iSogCLR and
the paper's robust global contrastive loss with TempNet temperatures.

All losses take each rank's local batch of L2-normalised features and gather the global batch
themselves (`tempnet.distributed`), so every rank computes the same global loss and updates the
per-sample state identically. The gradient reaching a rank's features equals a single process's
gradient on the concatenated batch; a trainer under DDP (which averages gradients over ranks)
multiplies the loss by the world size to recover the single-process parameter gradient.

Notation (PAPER.md): sim = I @ T^T [B, B]; for image i, d_ij = sim_ij - sim_ii; for text j,
e_ij = sim_ij - sim_jj. The moving-average losses keep, per dataset index, an estimate s of the
inner sum sum_{j != i} exp(A_ij) with A = d / tau, stored as s * exp(b) with a running max b so the
exponentials never overflow at tau = 0.005.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from tempnet.distributed import gather_ids, gather_with_grad
from tempnet.modules import check_tau_range

__all__ = ["ClipLoss", "CyClipLoss", "SogCLRLoss", "ISogCLRLoss", "RobustGCLoss", "CompositionalState"]


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must both be [B, d] with the same shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if torch.isnan(image_features).any() or torch.isnan(text_features).any():
        raise ValueError("features contain NaN")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half precision is up-cast (exp of d / 0.005 needs float32); float64 stays for gradcheck."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather both modalities over ranks: (I, T), each [B_global, d], at least float32."""
    _check_features(image_features, text_features)
    image, text = _at_least_float32(gather_with_grad(image_features)), _at_least_float32(gather_with_grad(text_features))
    if image.shape[0] < 2:
        raise ValueError("a contrastive loss needs a global batch of at least 2 pairs")
    return image, text


def _global_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """sim = I @ T^T [B, B] over the global batch, at least float32."""
    image, text = _gather_features(image_features, text_features)
    with torch.autocast(image.device.type, enabled=False):
        return image @ text.t()


def _row_diffs(sim: torch.Tensor) -> torch.Tensor:
    """d_ij = sim_ij - sim_ii: row i holds anchor i against every candidate j. [B, B]"""
    return sim - sim.diagonal()[:, None]


class CompositionalState(nn.Module):
    """Per-dataset-index moving averages s and running maxima b (stochastic compositional optimisation).

    update(ids, A) with A [B, B] (detached, row i = anchor ids[i]):
        b[i] = max(b_old[i], max_{j != i} A_ij)                (max_{j != i} A_ij on the first visit)
        g[i] = sum_{j != i} exp(A_ij - b[i])
        s[i] = g[i] on the first visit, else (1 - gamma) * s_old[i] * exp(b_old[i] - b[i]) + gamma * g[i]
    and returns (s, b) for the batch. The state lives in buffers, so it is checkpointed and moved by .to().
    """

    def __init__(self, num_samples: int, gamma: float):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        self.num_samples, self.gamma = num_samples, float(gamma)
        self.register_buffer("s", torch.zeros(num_samples))
        self.register_buffer("b", torch.zeros(num_samples))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 1:
            raise ValueError(f"dataset ids must be [B], got shape {tuple(ids.shape)}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_samples:
            bad = low if low < 0 else high
            raise IndexError(f"dataset id {bad} is outside the per-sample state [0, {self.num_samples})")

    @torch.no_grad()
    def update(self, ids: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_ids(ids)
        off_diag = ~torch.eye(A.shape[0], dtype=torch.bool, device=A.device)
        seen, b_old, s_old = self.seen[ids], self.b[ids], self.s[ids]
        # max over j != i: then the first visit's g holds a term exp(0) = 1 and s > 0 even when
        # every exp(A_ij) underflows (A_ii = 0 would dominate a max that includes the diagonal)
        row_max = A.masked_fill(~off_diag, float("-inf")).amax(dim=1)  # [B]
        b = torch.where(seen, torch.maximum(b_old, row_max), row_max)
        g = torch.exp(A - b[:, None]).masked_fill(~off_diag, 0.0).sum(dim=1)  # [B]; masked, never inf * 0
        s = torch.where(seen, (1 - self.gamma) * s_old * torch.exp(b_old - b) + self.gamma * g, g)
        self.s[ids], self.b[ids], self.seen[ids] = s.to(self.s.dtype), b.to(self.b.dtype), True
        return s, b


def _weighted_terms(d: torch.Tensor, tau: torch.Tensor, ids: torch.Tensor, state: CompositionalState,
                    rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One modality's side of the moving-average losses.

    d [B, B] row diffs, tau [B] per-anchor temperature. Updates `state` and returns
    (contrastive_i = sum_j w_ij d_ij  [B],  tau_weight_i = log(s_i/(B-1)) + b_i + rho - sum_j w_ij A_ij  [B]),
    with w_ij = exp(A_ij - b_i) / s_i (j != i) detached and tau_weight detached.
    """
    n = d.shape[0]
    A = (d / tau[:, None]).detach()  # [B, B]
    s, b = state.update(ids, A)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=d.device)
    w = torch.exp(A - b[:, None]).masked_fill(~off_diag, 0.0) / s[:, None]  # [B, B]
    contrastive = (w * d).sum(dim=1)
    tau_weight = torch.log(s / (n - 1)) + b + rho - (w * A).sum(dim=1)
    return contrastive, tau_weight


def _gather_pair_ids(image_ids: torch.Tensor, text_ids: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    image_ids, text_ids = gather_ids(image_ids), gather_ids(text_ids)
    if image_ids.shape != (batch,) or text_ids.shape != (batch,):
        raise ValueError(f"need one image id and one text id per pair: got {tuple(image_ids.shape)} and "
                         f"{tuple(text_ids.shape)} ids for a global batch of {batch}")
    return image_ids, text_ids


class ClipLoss(nn.Module):
    """InfoNCE of CLIP with a fixed temperature: mean of the image->text and text->image cross-entropies."""

    def __init__(self, tau: float = 0.01):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, *_ids) -> torch.Tensor:
        logits = _global_similarity(image_features, text_features) / self.tau  # [B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class CyClipLoss(ClipLoss):
    """CyCLIP (Goel et al., 2022): CLIP plus cyclic consistency of the similarity matrices.

    loss = CLIP + lambda_crossmodal * B * mean((S - S^T)^2) + lambda_inmodal * B * mean((I I^T - T T^T)^2)
    with S = I T^T, as in the CyCLIP reference implementation.
    """

    def __init__(self, tau: float = 0.01, lambda_inmodal: float = 0.25, lambda_crossmodal: float = 0.25):
        super().__init__(tau)
        self.lambda_inmodal, self.lambda_crossmodal = float(lambda_inmodal), float(lambda_crossmodal)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, *_ids) -> torch.Tensor:
        image, text = _gather_features(image_features, text_features)
        with torch.autocast(image.device.type, enabled=False):
            sim = image @ text.t()  # [B, B]
            target = torch.arange(sim.shape[0], device=sim.device)
            clip = (F.cross_entropy(sim / self.tau, target) + F.cross_entropy(sim.t() / self.tau, target)) / 2
            n = sim.shape[0]
            crossmodal = (sim - sim.t()).square().mean() * n
            inmodal = (image @ image.t() - text @ text.t()).square().mean() * n
        return clip + self.lambda_crossmodal * crossmodal + self.lambda_inmodal * inmodal


class SogCLRLoss(nn.Module):
    """SogCLR (Yuan et al., 2022): global contrastive loss with a fixed tau and per-index moving averages.

    forward(image_features [B, d], text_features [B, d], image_ids [B], text_ids [B]) -> scalar
        = mean_i sum_j w_ij d_ij + mean_j sum_i w'_ji e_ij   (w from the moving averages, detached)
    """

    def __init__(self, num_samples: int, gamma: float = 0.8, tau: float = 0.01):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)
        self.image_state, self.text_state = CompositionalState(num_samples, gamma), CompositionalState(num_samples, gamma)

    def forward(self, image_features, text_features, image_ids, text_ids) -> torch.Tensor:
        sim = _global_similarity(image_features, text_features)
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, sim.shape[0])
        tau = sim.new_full((sim.shape[0],), self.tau)
        image_term, _ = _weighted_terms(_row_diffs(sim), tau, image_ids, self.image_state, 0.0)
        text_term, _ = _weighted_terms(_row_diffs(sim.t()), tau, text_ids, self.text_state, 0.0)
        return image_term.mean() + text_term.mean()


class ISogCLRLoss(nn.Module):
    """iSogCLR (Qiu et al., 2023): SogCLR with one learned temperature per dataset index.

    The temperatures are buffers updated inside forward by momentum SGD on the DRO objective:
        u = (1 - beta) * u + beta * tau_weight;  tau = clamp(tau - eta * u, tau_min, tau_max)
    The loss of the step uses the temperatures from before the update.
    """

    def __init__(self, num_samples: int, gamma: float = 0.8, rho: float = 8.0, tau_init: float = 0.01,
                 tau_min: float = 0.005, tau_max: float = 0.05, eta: float = 0.03, beta: float = 0.5):
        super().__init__()
        check_tau_range(tau_min, tau_max)
        if not tau_min <= tau_init <= tau_max:
            raise ValueError(f"tau_init={tau_init} must lie in [{tau_min}, {tau_max}]")
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.rho, self.tau_min, self.tau_max, self.eta, self.beta = float(rho), tau_min, tau_max, eta, beta
        self.image_state, self.text_state = CompositionalState(num_samples, gamma), CompositionalState(num_samples, gamma)
        for name in ("tau_image", "tau_text"):
            self.register_buffer(name, torch.full((num_samples,), float(tau_init)))
        for name in ("u_image", "u_text"):
            self.register_buffer(name, torch.zeros(num_samples))

    @torch.no_grad()
    def _step_tau(self, ids, tau, tau_weight, u_buf, tau_buf) -> None:
        u = (1 - self.beta) * u_buf[ids] + self.beta * tau_weight
        u_buf[ids] = u
        tau_buf[ids] = (tau - self.eta * u).clamp(self.tau_min, self.tau_max)

    def forward(self, image_features, text_features, image_ids, text_ids) -> torch.Tensor:
        sim = _global_similarity(image_features, text_features)
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, sim.shape[0])
        self.image_state.check_ids(image_ids)
        self.text_state.check_ids(text_ids)
        tau_i, tau_t = self.tau_image[image_ids].clone(), self.tau_text[text_ids].clone()
        image_term, image_w = _weighted_terms(_row_diffs(sim), tau_i, image_ids, self.image_state, self.rho)
        text_term, text_w = _weighted_terms(_row_diffs(sim.t()), tau_t, text_ids, self.text_state, self.rho)
        self._step_tau(image_ids, tau_i, image_w, self.u_image, self.tau_image)
        self._step_tau(text_ids, tau_t, text_w, self.u_text, self.tau_text)
        return image_term.mean() + text_term.mean()


class RobustGCLoss(nn.Module):
    """The paper's robust global contrastive loss, with temperatures predicted by TempNets.

    forward(image_features [B, d], text_features [B, d], image_ids [B], text_ids [B], tau_image [B], tau_text [B])
    -> (contrastive_loss, temperature_loss), both scalars:
        contrastive = mean_i sum_j w_ij d_ij + (the same for texts over columns)
        temperature = mean_i tau_weight_i * tau_image_i + (the same for texts)
    Minimise their sum: the features get gradient from the first, the TempNets (through tau) from
    the second. On an index's first visit the sum's gradient is exactly that of the DRO objective
    mean_i [tau_i * log(mean_{j != i} exp(d_ij / tau_i)) + tau_i * rho].
    """

    def __init__(self, num_samples: int, gamma: float = 0.8, rho: float = 7.0):
        super().__init__()
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.rho = float(rho)
        self.image_state, self.text_state = CompositionalState(num_samples, gamma), CompositionalState(num_samples, gamma)

    def forward(self, image_features, text_features, image_ids, text_ids, tau_image, tau_text):
        sim = _global_similarity(image_features, text_features)
        n = sim.shape[0]
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, n)
        tau_image, tau_text = gather_with_grad(tau_image.reshape(-1)), gather_with_grad(tau_text.reshape(-1))
        if tau_image.shape != (n,) or tau_text.shape != (n,):
            raise ValueError(f"need one tau per image and per text: got {tuple(tau_image.shape)} and "
                             f"{tuple(tau_text.shape)} for a global batch of {n}")
        self.image_state.check_ids(image_ids)
        self.text_state.check_ids(text_ids)
        tau_image, tau_text = _at_least_float32(tau_image), _at_least_float32(tau_text)
        image_term, image_w = _weighted_terms(_row_diffs(sim), tau_image, image_ids, self.image_state, self.rho)
        text_term, text_w = _weighted_terms(_row_diffs(sim.t()), tau_text, text_ids, self.text_state, self.rho)
        contrastive = image_term.mean() + text_term.mean()
        temperature = (image_w * tau_image).mean() + (text_w * tau_text).mean()
        return contrastive, temperature
