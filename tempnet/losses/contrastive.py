"""Global contrastive losses for bimodal (image-text) training: CLIP, CyCLIP, SogCLR, iSogCLR and
the paper's robust global contrastive loss with TempNet temperatures (Qiu et al., ICML 2024, Sec. 4).

One interface for all five, `ContrastiveLoss`:

    loss_fn = Loss.from_config(loss_args, num_samples)   # how the trainer builds it (its own kwargs)
    out = loss_fn(image_features, text_features, image_ids, text_ids, tau_image=None, tau_text=None)
    out["loss"].backward()          # the trainer minimises out["loss"] only ...
    log({k: v for k, v in out.items()})   # ... and logs everything (all other entries are detached)

`out` holds "loss" (the total, with gradient), its named terms, which sum to it ("contrastive";
CyCLIP adds "crossmodal" and "inmodal", RobustGCLoss "temperature"), and, as detached statistics,
"tau_image" and "tau_text": the mean over the global batch of the temperatures the step used (the
fixed tau of CLIP, CyCLIP and SogCLR, iSogCLR's per-sample taus before its update, the given taus of
RobustGCLoss). Only RobustGCLoss takes tau_image / tau_text (`takes_tempnets`); the others raise if given.

All losses take each rank's local batch of L2-normalised features and gather the global batch
themselves (`tempnet.distributed`), so every rank computes the same global loss and updates the
per-sample state identically. The gradient reaching a rank's features equals a single process's
gradient on the concatenated batch; a trainer under DDP (which averages gradients over ranks)
multiplies the loss by the world size to recover the single-process parameter gradient.

Notation: sim = I @ T^T [B, B]; for image i, d_ij = sim_ij - sim_ii; for text j,
e_ij = sim_ij - sim_jj. The moving-average losses keep, per dataset index, an estimate s of the
inner sum sum_{j != i} exp(A_ij) with A = d / tau, stored as s * exp(b) with a running max b so the
exponentials never overflow at tau = 0.005. Both modalities are computed in the [i, j] layout of
sim (image anchors along rows, text anchors along columns), so no [B, B] transpose is materialised.

Checks that read values (id ranges, NaN) cost a host sync and run only when `tempnet.checks` is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tempnet import checks
from tempnet.distributed import gather_ids, gather_with_grad
from tempnet.losses.sample_state import (CompositionalState, PerSampleBuffers, cosine_gamma, put_rows, rows_at,
                                         set_gamma, state_bytes_per_sample)
from tempnet.modules import check_tau_range

__all__ = ["ContrastiveLoss", "ClipLoss", "CyClipLoss", "SogCLRLoss", "ISogCLRLoss", "RobustGCLoss",
           "CompositionalState", "cosine_gamma", "set_gamma", "state_bytes_per_sample"]


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must both be [B, d] with the same shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if checks.enabled() and (torch.isnan(image_features).any() or torch.isnan(text_features).any()):
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


def _similarity(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """sim = I @ T^T [B, B] in the features' (at least float32) precision, also under autocast."""
    with torch.autocast(image.device.type, enabled=False):
        return image @ text.t()


def _gather_pair_ids(image_ids: torch.Tensor, text_ids: torch.Tensor,
                     local_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check each rank's ids against its own batch (before a collective could hang on a mismatch), then gather."""
    if image_ids is None or text_ids is None:
        raise ValueError("this loss keeps per-sample state: pass image_ids and text_ids (dataset indices, [B])")
    if image_ids.shape != (local_batch,) or text_ids.shape != (local_batch,):
        raise ValueError(f"need one image id and one text id per pair: got {tuple(image_ids.shape)} and "
                         f"{tuple(text_ids.shape)} ids for a batch of {local_batch}")
    return gather_ids(image_ids), gather_ids(text_ids)


def _no_taus(name: str, tau_image, tau_text) -> None:
    if tau_image is not None or tau_text is not None:
        raise ValueError(f"{name} uses its own temperature; tau_image and tau_text are only for RobustGCLoss")


def _fixed_tau_stats(tau: float, like: torch.Tensor) -> dict[str, torch.Tensor]:
    t = torch.full((), tau, dtype=like.dtype, device=like.device)
    return {"tau_image": t, "tau_text": t}


def _exp_off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """(exp(x) [B, B] with 0 on the diagonal, x floored at log(finfo.tiny) + 1 in place: -86.3 in float32).

    CPU exp is 25 to 60 times slower on arguments whose result underflows (x < -87.3 in float32),
    and A - b reaches -400 at tau = 0.005. The floor changes a term by less than 3.2e-38 (0 or a
    subnormal becomes e * tiny), far below the float32 resolution of a sum that holds its max term 1.
    """
    e = torch.exp(x.clamp_min_(math.log(torch.finfo(x.dtype).tiny) + 1.0))
    e.diagonal().zero_()
    return e


class _WeightedSimilarity(torch.autograd.Function):
    """sum_ij G_ij (I T^T)_ij for a constant G [B, B] whose value was computed under no_grad.

    forward(image [B, d], text [B, d], weight G [B, B], value []) -> value; backward: grad * G @ T and
    grad * G^T @ I, the matmul backward of sim alone (no [B, B] product or its gradient materialised).
    """

    @staticmethod
    def forward(ctx, image, text, weight, value):
        ctx.save_for_backward(image, text, weight)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        image, text, weight = ctx.saved_tensors
        with torch.autocast(image.device.type, enabled=False):
            grad_image = (weight @ text) * grad if ctx.needs_input_grad[0] else None
            grad_text = (weight.t() @ image) * grad if ctx.needs_input_grad[1] else None
        return grad_image, grad_text, None, None


def _moving_average_terms(image: torch.Tensor, text: torch.Tensor, tau_image: torch.Tensor, tau_text: torch.Tensor,
                          image_ids: torch.Tensor, text_ids: torch.Tensor, image_state: CompositionalState,
                          text_state: CompositionalState, rho: float):
    """Both modalities of the moving-average losses from one pass over the similarities sim = I @ T^T.

    image, text [B, d] gathered features (with gradient); tau_image, tau_text [B] per-anchor
    temperatures (read detached). Updates both states and returns
        contrastive: scalar, mean_i sum_j w_ij d_ij + mean_j sum_i w'_ji e_ij, with the weights
                     w_ij = exp(A_ij - b_i) / s_i (j != i) held constant in its gradient;
        tau_weight_image, tau_weight_text [B] (detached): log(s_i / (B-1)) + b_i + rho - sum_j w_ij A_ij.
    Everything [B, B] happens once under no_grad, including G = d(contrastive)/d(sim); the gradient
    reaches the features through _WeightedSimilarity, so autograd adds only the two matmuls of sim's backward.
    """
    n = image.shape[0]
    with torch.no_grad():
        sim = _similarity(image, text)  # [B, B]
        diag = sim.diagonal()  # [B] sim_ii
        inv_ti, inv_tt = tau_image.detach().reciprocal(), tau_text.detach().reciprocal()  # [B]
        masked = sim.clone()
        masked.diagonal().fill_(float("-inf"))  # the row and column maxima run over j != i
        # image anchors along rows: x_ij = A_ij - b_i = (sim_ij - sim_ii - b_i tau_i) / tau_i <= 0 (j != i)
        b_i = image_state.running_max(image_ids, (masked.amax(dim=1) - diag) * inv_ti)
        x_i = (sim - (diag + b_i * tau_image.detach())[:, None]).mul_(inv_ti[:, None])  # [B, B]
        e_i = _exp_off_diagonal(x_i)
        # text anchors along columns: x'_ij = A'_ij - b'_j, A'_ij = (sim_ij - sim_jj) / tau'_j
        b_t = text_state.running_max(text_ids, (masked.amax(dim=0) - diag) * inv_tt)
        x_t = (sim - (diag + b_t * tau_text.detach())[None, :]).mul_(inv_tt[None, :])  # [B, B]
        e_t = _exp_off_diagonal(x_t)
        g_i, g_t = e_i.sum(dim=1), e_t.sum(dim=0)
        s_i, s_t = image_state.update(image_ids, b_i, g_i), text_state.update(text_ids, b_t, g_t)
        mass_i, mass_t = g_i / s_i, g_t / s_t  # sum_j w_ij (exactly 1 when s = g, on a first visit)
        # sum_j w_ij A_ij = sum_j w_ij x_ij + b_i * mass_i: the first sum has no cancellation against b
        wx_i = torch.linalg.vecdot(e_i, x_i, dim=1) / s_i  # e_ii = 0 and x_ii is finite
        wx_t = torch.linalg.vecdot(e_t, x_t, dim=0) / s_t
        con_i = (wx_i + b_i * mass_i) * tau_image.detach()  # sum_j w_ij d_ij
        con_t = (wx_t + b_t * mass_t) * tau_text.detach()
        # log(s_i / (B-1)) + b_i + rho - sum_j w_ij A_ij, with b_i (1 - mass_i) = 0 exactly on a first visit
        tau_weight_i = torch.log(s_i / (n - 1)) + rho - wx_i + b_i * (s_i - g_i) / s_i
        tau_weight_t = torch.log(s_t / (n - 1)) + rho - wx_t + b_t * (s_t - g_t) / s_t
        # G_ij = (w_ij + w'_ji) / B off the diagonal, -(mass_i + mass'_i) / B on it
        grad_sim = e_i.mul_((1.0 / (n * s_i))[:, None]).addcmul_(e_t, (1.0 / (n * s_t))[None, :])
        grad_sim.diagonal().copy_(-(mass_i + mass_t) / n)
        value = (con_i.sum() + con_t.sum()) / n
    return _WeightedSimilarity.apply(image, text, grad_sim, value), tau_weight_i, tau_weight_t


class ContrastiveLoss(nn.Module):
    """A loss of `tempnet.losses.CONTRASTIVE_LOSSES`, called as in the module docstring. `takes_tempnets`: forward
    needs tau_image, tau_text [B] from the two TempNets (`tempnet.modules.TempNetPair`). `from_config(args,
    num_samples)`: the loss from the trainer's `loss_args` (clip_config.LossConfig) and the dataset size."""

    takes_tempnets = False

    @classmethod
    def from_config(cls, args, num_samples: int) -> ContrastiveLoss:
        raise NotImplementedError(f"{cls.__name__}.from_config")


class ClipLoss(ContrastiveLoss):
    """InfoNCE of CLIP with a fixed temperature: mean of the image->text and text->image cross-entropies.

    forward(image_features [B, d], text_features [B, d], image_ids=None, text_ids=None)
    -> {"loss", "contrastive" (= loss), "tau_image", "tau_text"}; ids are accepted and unused.
    """

    def __init__(self, tau: float = 0.01):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    @classmethod
    def from_config(cls, args, num_samples: int) -> ClipLoss:
        return cls(tau=args.tau)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, image_ids=None, text_ids=None,
                tau_image=None, tau_text=None) -> dict[str, torch.Tensor]:
        _no_taus(type(self).__name__, tau_image, tau_text)
        image, text = _gather_features(image_features, text_features)
        logits = _similarity(image, text) / self.tau  # [B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return {"loss": loss, "contrastive": loss.detach(), **_fixed_tau_stats(self.tau, loss)}


class CyClipLoss(ClipLoss):
    """CyCLIP (Goel et al., 2022): CLIP plus cyclic consistency of the similarity matrices.

    loss = contrastive + crossmodal + inmodal with contrastive = CLIP,
    crossmodal = lambda_crossmodal * B * mean((S - S^T)^2), inmodal = lambda_inmodal * B * mean((I I^T - T T^T)^2),
    S = I T^T, as in the CyCLIP reference implementation. Returns those four and tau_image, tau_text.
    """

    def __init__(self, tau: float = 0.01, lambda_inmodal: float = 0.25, lambda_crossmodal: float = 0.25):
        super().__init__(tau)
        self.lambda_inmodal, self.lambda_crossmodal = float(lambda_inmodal), float(lambda_crossmodal)

    @classmethod
    def from_config(cls, args, num_samples: int) -> CyClipLoss:
        return cls(tau=args.tau, lambda_inmodal=args.lambda_inmodal, lambda_crossmodal=args.lambda_crossmodal)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, image_ids=None, text_ids=None,
                tau_image=None, tau_text=None) -> dict[str, torch.Tensor]:
        _no_taus(type(self).__name__, tau_image, tau_text)
        image, text = _gather_features(image_features, text_features)
        with torch.autocast(image.device.type, enabled=False):
            sim = image @ text.t()  # [B, B]
            n = sim.shape[0]
            target = torch.arange(n, device=sim.device)
            clip = (F.cross_entropy(sim / self.tau, target) + F.cross_entropy(sim.t() / self.tau, target)) / 2
            crossmodal = self.lambda_crossmodal * n * (sim - sim.t()).square().mean()
            inmodal = self.lambda_inmodal * n * (image @ image.t() - text @ text.t()).square().mean()
        loss = clip + crossmodal + inmodal
        return {"loss": loss, "contrastive": clip.detach(), "crossmodal": crossmodal.detach(),
                "inmodal": inmodal.detach(), **_fixed_tau_stats(self.tau, loss)}


class SogCLRLoss(ContrastiveLoss):
    """SogCLR (Yuan et al., 2022): global contrastive loss with a fixed tau and per-index moving averages.

    forward(image_features [B, d], text_features [B, d], image_ids [B], text_ids [B])
    -> {"loss", "contrastive" (= loss), "tau_image", "tau_text"} with
       loss = mean_i sum_j w_ij d_ij + mean_j sum_i w'_ji e_ij   (w from the moving averages, detached)
    """

    def __init__(self, num_samples: int, gamma: float = 0.8, tau: float = 0.01, state_on_host: bool = False):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)
        self.image_state = CompositionalState(num_samples, gamma, state_on_host)
        self.text_state = CompositionalState(num_samples, gamma, state_on_host)

    @classmethod
    def from_config(cls, args, num_samples: int) -> SogCLRLoss:
        return cls(num_samples, gamma=args.gamma, tau=args.tau, state_on_host=args.state_on_host)

    def forward(self, image_features, text_features, image_ids, text_ids, tau_image=None,
                tau_text=None) -> dict[str, torch.Tensor]:
        _no_taus(type(self).__name__, tau_image, tau_text)
        image, text = _gather_features(image_features, text_features)
        n = image.shape[0]
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, image_features.shape[0])
        self.image_state.check_ids(image_ids)
        self.text_state.check_ids(text_ids)
        tau = image.new_full((n,), self.tau)
        loss, _, _ = _moving_average_terms(image, text, tau, tau, image_ids, text_ids, self.image_state,
                                           self.text_state, 0.0)
        return {"loss": loss, "contrastive": loss.detach(), **_fixed_tau_stats(self.tau, loss)}


class ISogCLRLoss(ContrastiveLoss, PerSampleBuffers):
    """iSogCLR (Qiu et al., 2023): SogCLR with one learned temperature per dataset index.

    The temperatures are buffers updated inside forward by momentum SGD on the DRO objective:
        u = (1 - beta) * u + beta * clamp(tau_weight, -grad_clamp, grad_clamp)
        tau = clamp(tau - eta * u, tau_min, tau_max)
    The clamp of the tau-gradient weight is the authors' (grad_clamp=None turns it off). The loss of
    the step uses the temperatures from before the update.

    forward(image_features [B, d], text_features [B, d], image_ids [B], text_ids [B])
    -> {"loss", "contrastive" (= loss), "tau_image", "tau_text"} (taus: batch means before the update).
    """

    def __init__(self, num_samples: int, gamma: float = 0.8, rho: float = 8.0, tau_init: float = 0.01,
                 tau_min: float = 0.005, tau_max: float = 0.05, eta: float = 0.03, beta: float = 0.5,
                 grad_clamp: float | None = 5.0, state_on_host: bool = False):
        super().__init__()
        check_tau_range(tau_min, tau_max)
        if not tau_min <= tau_init <= tau_max:
            raise ValueError(f"tau_init={tau_init} must lie in [{tau_min}, {tau_max}]")
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if grad_clamp is not None and not grad_clamp > 0:
            raise ValueError(f"grad_clamp must be positive (or None for no clamp), got {grad_clamp}")
        self.rho, self.tau_min, self.tau_max, self.eta, self.beta = float(rho), tau_min, tau_max, eta, beta
        self.grad_clamp = None if grad_clamp is None else float(grad_clamp)
        self.on_host = bool(state_on_host)
        self.image_state = CompositionalState(num_samples, gamma, state_on_host)
        self.text_state = CompositionalState(num_samples, gamma, state_on_host)
        for name in ("tau_image", "tau_text"):
            self._per_sample(name, torch.full((num_samples,), float(tau_init)))
        for name in ("u_image", "u_text"):
            self._per_sample(name, torch.zeros(num_samples))

    @classmethod
    def from_config(cls, args, num_samples: int) -> ISogCLRLoss:
        return cls(num_samples, gamma=args.gamma, rho=args.rho, tau_init=args.isogclr_tau_init,
                   tau_min=args.isogclr_tau_min, tau_max=args.isogclr_tau_max, eta=args.isogclr_eta,
                   beta=args.isogclr_beta, grad_clamp=args.isogclr_grad_clamp, state_on_host=args.state_on_host)

    @torch.no_grad()
    def _step_tau(self, ids, tau, tau_weight, u_buf, tau_buf) -> None:
        if self.grad_clamp is not None:
            tau_weight = tau_weight.clamp(-self.grad_clamp, self.grad_clamp)
        u = (1 - self.beta) * rows_at(u_buf, ids).to(tau_weight.dtype) + self.beta * tau_weight
        put_rows(u_buf, ids, u)
        put_rows(tau_buf, ids, (tau - self.eta * u).clamp(self.tau_min, self.tau_max))

    def forward(self, image_features, text_features, image_ids, text_ids, tau_image=None,
                tau_text=None) -> dict[str, torch.Tensor]:
        _no_taus(type(self).__name__, tau_image, tau_text)
        image, text = _gather_features(image_features, text_features)
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, image_features.shape[0])
        self.image_state.check_ids(image_ids)
        self.text_state.check_ids(text_ids)
        tau_i, tau_t = rows_at(self.tau_image, image_ids).to(image.dtype), rows_at(self.tau_text, text_ids).to(image.dtype)
        loss, tw_i, tw_t = _moving_average_terms(image, text, tau_i, tau_t, image_ids, text_ids, self.image_state,
                                                 self.text_state, self.rho)
        self._step_tau(image_ids, tau_i, tw_i, self.u_image, self.tau_image)
        self._step_tau(text_ids, tau_t, tw_t, self.u_text, self.tau_text)
        return {"loss": loss, "contrastive": loss.detach(), "tau_image": tau_i.mean(), "tau_text": tau_t.mean()}


class RobustGCLoss(ContrastiveLoss):
    """The paper's robust global contrastive loss, with temperatures predicted by TempNets.

    forward(image_features [B, d], text_features [B, d], image_ids [B], text_ids [B], tau_image [B], tau_text [B])
    -> {"loss" = contrastive + temperature, "contrastive", "temperature", "tau_image", "tau_text"}:
        contrastive = mean_i sum_j w_ij d_ij + (the same for texts over columns)
        temperature = mean_i tau_weight_i * tau_image_i + (the same for texts)
    The features get gradient from the first term, the TempNets (through tau) from the second. On an
    index's first visit the gradient of "loss" is exactly that of the DRO objective
    mean_i [tau_i * log(mean_{j != i} exp(d_ij / tau_i)) + tau_i * rho] (Qiu et al., ICML 2024, Sec. 4).
    """

    takes_tempnets = True

    def __init__(self, num_samples: int, gamma: float = 0.8, rho: float = 7.0, state_on_host: bool = False):
        super().__init__()
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.rho = float(rho)
        self.image_state = CompositionalState(num_samples, gamma, state_on_host)
        self.text_state = CompositionalState(num_samples, gamma, state_on_host)

    @classmethod
    def from_config(cls, args, num_samples: int) -> RobustGCLoss:
        return cls(num_samples, gamma=args.gamma, rho=args.rho, state_on_host=args.state_on_host)

    def forward(self, image_features, text_features, image_ids, text_ids, tau_image=None,
                tau_text=None) -> dict[str, torch.Tensor]:
        if tau_image is None or tau_text is None:
            raise ValueError("RobustGCLoss needs tau_image and tau_text (one temperature per image and text, [B])")
        image, text = _gather_features(image_features, text_features)
        local = image_features.shape[0]
        image_ids, text_ids = _gather_pair_ids(image_ids, text_ids, local)
        if tau_image.numel() != local or tau_text.numel() != local:
            raise ValueError(f"need one tau per image and per text: got {tuple(tau_image.shape)} and "
                             f"{tuple(tau_text.shape)} for a batch of {local}")
        tau_image, tau_text = gather_with_grad(tau_image.reshape(-1)), gather_with_grad(tau_text.reshape(-1))
        self.image_state.check_ids(image_ids)
        self.text_state.check_ids(text_ids)
        tau_image, tau_text = tau_image.to(image.dtype), tau_text.to(image.dtype)
        contrastive, tw_i, tw_t = _moving_average_terms(image, text, tau_image, tau_text, image_ids, text_ids,
                                                        self.image_state, self.text_state, self.rho)
        temperature = (tw_i * tau_image).mean() + (tw_t * tau_text).mean()
        return {"loss": contrastive + temperature, "contrastive": contrastive.detach(),
                "temperature": temperature.detach(), "tau_image": tau_image.detach().mean(),
                "tau_text": tau_text.detach().mean()}
