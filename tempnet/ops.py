"""The LM head, the temperature head and the next-token loss fused, chunk by chunk of tokens.

The unfused training path materialises the logits z = h W^T of every position ([N, V]: 0.5 GB in
float32 for 4096 tokens of a 32000-token vocabulary), plus TempNet's input and the loss's softmax,
and keeps them until the backward. `linear_tempnet_dro_loss` computes the same values and gradients
while holding only one chunk of tokens' logits-sized tensors at a time: the forward keeps per
position only tau (and the RNG state of each chunk when the head draws dropout masks), and the
backward recomputes each chunk's logits and the head.

Gradients of one position's loss (Qiu et al., ICML 2024, Sec. 3, the robust loss
L = tau * CE(z / tau, y) + tau * (rho - log V)), with p = softmax(z / tau):

    robust:  dL/dz = p - onehot(y)              dL/dtau = CE + (rho - log V) - (E_p[z] - z_y) / tau
    plain:   dL/dz = (p - onehot(y)) / tau      dL/dtau = -(E_p[z] - z_y) / tau^2      (L = CE(z / tau, y))

each times 1 / (number of non-ignored positions). dL/dtau flows into the head's parameters by
recomputing tau = head(z.detach()) with autograd in the backward. Since z / tau = (h / tau) W^T,
the tempered cross-entropy is a plain linear cross-entropy of a rescaled hidden state, which a fused
GPU kernel (cut-cross-entropy, liger-kernel) could serve; the chunked PyTorch code here runs anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["linear_tempnet_dro_loss", "ROBUST_OBJECTIVES", "default_chunk_size", "CHUNK_ELEMENTS"]

#: Whether each objective (the names of `tempnet.losses.lm.OBJECTIVES`) uses the robust loss.
ROBUST_OBJECTIVES = {"ce": False, "dro": True, "tempnet_ce": False, "tempnet_dro": True}

#: Logits elements per chunk by default: 2**23 (32 MiB in float32, 256 tokens of a 32768-token
#: vocabulary). The backward holds about five tensors of this size (logits, softmax, the head's
#: input and its gradient), so the loss adds ~200 MB whatever N; larger chunks buy little speed.
CHUNK_ELEMENTS = 2 ** 23


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's logits hold about `CHUNK_ELEMENTS` elements."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def linear_tempnet_dro_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                            tempnet: nn.Module, rho: float, *, objective: str = "tempnet_dro",
                            lm_head_bias: torch.Tensor | None = None, ignore_index: int = -100,
                            chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """The objective's loss on logits z = hidden @ lm_head_weight^T (+ bias), never all held at once.

    Equals `tempnet.losses.lm.objective_terms(z, labels, tempnet(z.detach()), robust, rho)` in value
    and in every gradient (hidden, weight, bias, the head's parameters), with z computed chunk by
    chunk: tau is predicted from each chunk's detached logits, and the backward recomputes them.
    A head in training mode with dropout sees one mask per chunk, the same in forward and backward.

    Args:
        hidden: [N, d] the backbone's last hidden states (any float dtype).
        lm_head_weight: [V, d]; lm_head_bias: [V] or None. Under autocast they are cast to its dtype.
        labels: [N] integer targets in [0, V), or `ignore_index`.
        tempnet: the temperature head, logits [C, V] -> tau [C, 1] (TempNet, GlobalTemperature,
            FixedTemperature from `tempnet.modules`).
        rho: the KL budget of the robust loss (used by "dro" and "tempnet_dro").
        objective: "tempnet_dro", "tempnet_ce", "dro" or "ce": robust loss or tempered CE.
        chunk_size: tokens per chunk; default `default_chunk_size(V)`.
    Returns:
        {"loss": scalar (float32, differentiable), "ce": mean CE(z / tau, y) (detached),
         "tau_mean", "tau_min", "tau_max": over the non-ignored positions (all if none), detached,
         "tau": [N] float32 detached, the temperature of every position}.
    """
    n, vocab = _check_inputs(hidden, lm_head_weight, lm_head_bias, labels, tempnet, rho, objective, ignore_index)
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # what autocast would do to the LM head's F.linear
        dtype = torch.get_autocast_dtype(device_type)
        hidden, lm_head_weight = hidden.to(dtype), lm_head_weight.to(dtype)
        lm_head_bias = None if lm_head_bias is None else lm_head_bias.to(dtype)
    params = tuple(p for p in tempnet.parameters())
    loss, ce, tau = _LinearTempNetLoss.apply(hidden, lm_head_weight, lm_head_bias, labels, tempnet,
                                             ROBUST_OBJECTIVES[objective], float(rho), ignore_index, chunk_size,
                                             *params)
    valid = labels != ignore_index
    t = tau[valid] if valid.any() else tau
    return {"loss": loss, "ce": ce, "tau_mean": t.mean(), "tau_min": t.min(), "tau_max": t.max(), "tau": tau}


def _check_inputs(hidden, weight, bias, labels, tempnet, rho, objective, ignore_index) -> tuple[int, int]:
    """Raise a ValueError naming the problem; return (N, V)."""
    if objective not in ROBUST_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(ROBUST_OBJECTIVES)}")
    if ROBUST_OBJECTIVES[objective] and not rho >= 0:
        raise ValueError(f"rho (the KL budget) must be >= 0, got {rho}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [N, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"lm_head_weight must be [V, d] with d={hidden.shape[1]} (from hidden "
                         f"{tuple(hidden.shape)}), got shape {tuple(weight.shape)}")
    n, vocab = hidden.shape[0], weight.shape[0]
    if n == 0:
        raise ValueError("hidden has no positions (N = 0)")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"lm_head_bias must be [V]={vocab}, got shape {tuple(bias.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N]={n} (from hidden {tuple(hidden.shape)}), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    head_vocab = getattr(tempnet, "vocab_size", vocab)
    if head_vocab != vocab:
        raise ValueError(f"the temperature head was built for vocabulary size {head_vocab} but lm_head_weight "
                         f"{tuple(weight.shape)} has V={vocab}")
    valid = labels != ignore_index
    if ((labels[valid] < 0) | (labels[valid] >= vocab)).any():
        raise ValueError(f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
    return n, vocab


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[C, d] -> [C, V]: the matmul in the input dtype, then up-cast to float32 (as the unfused loss
    does; float64 stays)."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    return z.to(torch.promote_types(z.dtype, torch.float32))


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _run_head(head: nn.Module, z: torch.Tensor, state) -> torch.Tensor:
    """head(z) -> tau [C] float32; with `state` (from `_rng_state`), under that RNG state, restored after."""
    if state is None:
        return head(z).reshape(-1).to(z.dtype)
    devices = [z.device] if z.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], z.device)
        return head(z).reshape(-1).to(z.dtype)


class _LinearTempNetLoss(torch.autograd.Function):
    """Forward: loss, mean CE, tau [N]. The head's parameters are inputs so they receive gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, head, robust, rho, ignore_index, chunk_size, *params):
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = labels != ignore_index  # [N]
        target = labels.where(valid, torch.zeros_like(labels))[:, None]  # [N, 1], in range everywhere
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        ce = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        tau = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        # the head draws dropout masks only in training mode; keep each chunk's RNG state to redraw them
        keep_rng = head.training and any(p.requires_grad for p in params)
        states = []
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                z = _logits(hidden[rows], weight, bias)  # [C, V]
                states.append(_rng_state(hidden.device) if keep_rng else None)
                t = head(z).reshape(-1).to(dtype)  # [C]; the head reads the (detached) logits
                if t.shape != (z.shape[0],):
                    raise ValueError(f"the temperature head must return [C] or [C, 1] for logits "
                                     f"{tuple(z.shape)}, got {tuple(head(z).shape)}")
                tau[rows] = t
                ce[rows] = torch.logsumexp(z / t[:, None], -1) - z.gather(1, target[rows])[:, 0] / t
        count = valid.sum().clamp(min=1)
        ce = ce * valid  # ignored positions (any label) count as zero
        per_position = tau * (ce + (rho - math.log(vocab))) * valid if robust else ce
        ctx.save_for_backward(hidden, weight, bias, target, valid, tau)
        ctx.head, ctx.robust, ctx.rho, ctx.chunk_size, ctx.states = head, robust, rho, chunk_size, states
        ce_mean = ce.sum() / count
        ctx.mark_non_differentiable(ce_mean, tau)
        return per_position.sum() / count, ce_mean, tau

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_tau):
        hidden, weight, bias, target, valid, tau = ctx.saved_tensors
        params = ctx.needs_input_grad[9:]
        head, robust, chunk_size = ctx.head, ctx.robust, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_z = need_h or need_w or need_b
        trained = [p for p, need in zip(head.parameters(), params) if need]
        n, vocab = hidden.shape[0], weight.shape[0]
        const = ctx.rho - math.log(vocab)
        scale = valid * (grad_loss.to(tau.dtype) / valid.sum().clamp(min=1))  # [N]: d(mean)/d(per-position loss)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=tau.dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=tau.dtype, device=weight.device) if need_b else None
        grad_params = [None] * len(trained)
        with torch.autocast(hidden.device.type, enabled=False):
            for i, start in enumerate(range(0, n, chunk_size)):
                if not (need_z or trained):
                    break
                rows = slice(start, start + chunk_size)
                h, t, y, s = hidden[rows], tau[rows], target[rows], scale[rows]
                with torch.no_grad():
                    z = _logits(h, weight, bias)  # [C, V]
                    u = z / t[:, None]  # [C, V]
                    lse = torch.logsumexp(u, -1, keepdim=True)  # [C, 1]
                    p = u.sub_(lse).exp_()  # [C, V] softmax(z / tau), in place of u
                    if trained:
                        z_y = z.gather(1, y)[:, 0]  # [C]
                        gap = (p[:, None, :] @ z[:, :, None])[:, 0, 0] - z_y  # E_p[z] - z_y, [C]
                        if robust:
                            grad_tau = (lse[:, 0] - z_y / t + const - gap / t) * s
                        else:
                            grad_tau = -gap / t ** 2 * s
                    if need_z:
                        dz = p.scatter_add_(1, y, torch.full_like(p[:, :1], -1.0))  # p - onehot, in place
                        dz.mul_((s if robust else s / t)[:, None])  # [C, V]
                        if need_b:
                            grad_b += dz.sum(0)
                        dz = dz.to(weight.dtype)
                        if need_h:
                            grad_h[rows] = dz @ weight
                        if need_w:
                            grad_w += (dz.t() @ h).to(grad_w.dtype)
                        del dz
                    del p
                if trained:
                    with torch.enable_grad():
                        t_graph = _run_head(head, z, ctx.states[i])  # [C], recomputed with the forward's masks
                    del z
                    for k, g in enumerate(torch.autograd.grad(t_graph, trained, grad_tau, allow_unused=True)):
                        if g is not None:
                            grad_params[k] = g if grad_params[k] is None else grad_params[k] + g
        grads = iter(grad_params)
        head_grads = [next(grads) if need else None for need in params]
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None, *head_grads)
