"""The LM head, the temperature head and the next-token loss fused, chunk by chunk of tokens.

The unfused training path materialises the logits z = h W^T of every position ([N, V]: 0.5 GB in
float32 for 4096 tokens of a 32000-token vocabulary), plus TempNet's input and the loss's softmax,
and keeps them until the backward. `linear_tempnet_dro_loss` computes the same values and gradients
while holding only one chunk of tokens' logits-sized tensors at a time. The loss is a scalar, so
when autograd is on the forward also computes, chunk by chunk, the gradients for a unit upstream
gradient (of hidden [N, d], weight [V, d], bias and the head's parameters: nothing logits-sized),
and the backward only scales them. No logits are recomputed, and the head runs once per chunk, so a
head with dropout sees one mask, used by both its output and its gradient.

Gradients of one position's loss (Qiu et al., ICML 2024, Sec. 3, the robust loss
L = tau * CE(z / tau, y) + tau * (rho - log V)), with p = softmax(z / tau):

    robust:  dL/dz = p - onehot(y)              dL/dtau = CE + (rho - log V) - (E_p[z] - z_y) / tau
    plain:   dL/dz = (p - onehot(y)) / tau      dL/dtau = -(E_p[z] - z_y) / tau^2      (L = CE(z / tau, y))

each times 1 / (number of non-ignored positions). dL/dtau flows into the head's parameters by
autograd through tau = head(z.detach()) of the chunk. Since z / tau = (h / tau) W^T,
the tempered cross-entropy is a plain linear cross-entropy of a rescaled hidden state, which a fused
GPU kernel (cut-cross-entropy, liger-kernel) could serve; the chunked PyTorch code here runs anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tempnet.losses.objectives import Objective, objective_class

__all__ = ["linear_tempnet_dro_loss", "default_chunk_size", "CHUNK_ELEMENTS"]

#: Logits elements per chunk by default: 2**23 (32 MiB in float32, 256 tokens of a 32768-token
#: vocabulary). A chunk holds a handful of tensors of this size (logits, softmax, the head's
#: normalised input and its intermediates), ~150-250 MB whatever N; larger chunks buy little speed.
CHUNK_ELEMENTS = 2 ** 23


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's logits hold about `CHUNK_ELEMENTS` elements."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def linear_tempnet_dro_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                            tempnet: nn.Module, rho: float, *, objective: str | Objective = "tempnet_dro",
                            lm_head_bias: torch.Tensor | None = None, ignore_index: int = -100,
                            chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """The objective's loss on logits z = hidden @ lm_head_weight^T (+ bias), never all held at once.

    Equals `tempnet.losses.lm.objective_terms(z, labels, tempnet(z.detach()), robust, rho)` (the objective's
    `Objective.loss`) in value
    and in every gradient (hidden, weight, bias, the head's parameters), with z computed chunk by
    chunk: tau is predicted from each chunk's detached logits. With autograd on, the gradients are
    computed in the forward (so calling it under torch.enable_grad without a backward wastes that
    work: evaluate under torch.no_grad). A head with dropout in training mode draws one mask per chunk.

    Args:
        hidden: [N, d] the backbone's last hidden states (any float dtype).
        lm_head_weight: [V, d]; lm_head_bias: [V] or None. Under autocast they are cast to its dtype.
        labels: [N] integer targets in [0, V), or `ignore_index`.
        tempnet: the temperature head, logits [C, V] -> tau [C, 1] (TempNet, GlobalTemperature,
            FixedTemperature from `tempnet.modules`).
        rho: the KL budget of the robust loss (used by "dro" and "tempnet_dro").
        objective: a name of `tempnet.losses.objectives.OBJECTIVES` ("tempnet_dro", "tempnet_ce", "dro", "ce", ...)
            or an `Objective`: its `robust` picks the robust loss or the tempered CE.
        chunk_size: tokens per chunk; default `default_chunk_size(V)`.
    Returns:
        {"loss": scalar (float32, differentiable), "ce": mean CE(z / tau, y) (detached),
         "tau_mean", "tau_min", "tau_max": over the non-ignored positions (all if none), detached,
         "tau": [N] float32 detached, the temperature of every position}.
    """
    robust = (objective_class(objective) if isinstance(objective, str) else objective).robust
    n, vocab = _check_inputs(hidden, lm_head_weight, lm_head_bias, labels, tempnet, rho, robust, ignore_index)
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
                                             robust, float(rho), ignore_index, chunk_size,
                                             torch.is_grad_enabled(), *params)
    valid = labels != ignore_index
    t = tau[valid] if valid.any() else tau
    return {"loss": loss, "ce": ce, "tau_mean": t.mean(), "tau_min": t.min(), "tau_max": t.max(), "tau": tau}


def _check_inputs(hidden, weight, bias, labels, tempnet, rho, robust, ignore_index) -> tuple[int, int]:
    """Raise a ValueError naming the problem; return (N, V)."""
    if robust and not rho >= 0:
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


class _LinearTempNetLoss(torch.autograd.Function):
    """Forward: loss, mean CE, tau [N], and (when grad is on) every gradient for a unit upstream gradient.

    The loss is a scalar, so its gradients are those for upstream gradient 1 times the upstream
    gradient: computing them chunk by chunk in the forward (as liger-kernel's fused linear cross-entropy
    does) avoids recomputing the logits and the head in the backward, and the head runs once, so its
    dropout mask is the forward's by construction. The head's parameters are inputs of the Function so
    that they receive their gradients through it.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, head, robust, rho, ignore_index, chunk_size, grad_enabled,
                *params):
        n, vocab = hidden.shape[0], weight.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        needs = ctx.needs_input_grad if grad_enabled else (False,) * (10 + len(params))
        need_h, need_w, need_b = needs[:3]
        need_z = need_h or need_w or need_b
        trained = [p for p, need in zip(params, needs[10:]) if need]
        valid = labels != ignore_index  # [N]
        target = labels.where(valid, torch.zeros_like(labels))[:, None]  # [N, 1], in range everywhere
        count = valid.sum().clamp(min=1)
        scale = valid / count  # [N]: d(mean loss) / d(per-position loss)
        const = rho - math.log(vocab)
        ce = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        tau = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=dtype, device=weight.device) if need_b else None
        grad_params = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in trained]
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                h, y, s = hidden[rows], target[rows], scale[rows]
                z = _logits(h, weight, bias)  # [C, V]
                with torch.enable_grad():  # the head's graph (for its parameters' gradient) only
                    t_graph = head(z).reshape(-1).to(dtype) if trained else None
                t = t_graph.detach() if trained else head(z).reshape(-1).to(dtype)  # [C], from the detached logits
                if t.shape != (z.shape[0],):
                    raise ValueError(f"the temperature head must return [C] or [C, 1] for logits {tuple(z.shape)}, "
                                     f"got {t.numel()} values")
                tau[rows] = t
                u = z / t[:, None]  # [C, V]
                lse = torch.logsumexp(u, -1, keepdim=True)  # [C, 1]
                z_y = z.gather(1, y)[:, 0]  # [C]
                ce[rows] = lse[:, 0] - z_y / t
                if not (need_z or trained):
                    continue
                p = u.sub_(lse).exp_()  # [C, V] softmax(z / tau), in place of u
                if trained:
                    gap = (p[:, None, :] @ z[:, :, None])[:, 0, 0] - z_y  # E_p[z] - z_y, [C]
                    if robust:  # d/dtau [tau * CE(z / tau) + tau * const]
                        grad_tau = (ce[rows] + const - gap / t) * s
                    else:  # d/dtau CE(z / tau)
                        grad_tau = -gap / t ** 2 * s
                    for acc, g in zip(grad_params, torch.autograd.grad(t_graph, trained, grad_tau,
                                                                        allow_unused=True)):
                        if g is not None:
                            acc += g
                    del t_graph
                del z
                if need_z:
                    dz = p.scatter_add_(1, y, torch.full_like(p[:, :1], -1.0))  # p - onehot, in place
                    dz.mul_((s if robust else s / t)[:, None])  # [C, V] d(mean loss) / dz
                    if need_b:
                        grad_b += dz.sum(0)
                    dz = dz.to(weight.dtype)
                    if need_h:
                        grad_h[rows] = dz @ weight
                    if need_w and h.dtype == dtype:
                        grad_w.addmm_(dz.t(), h)  # in place: no [V, d] temporary per chunk
                    elif need_w:
                        grad_w += (dz.t() @ h).to(dtype)
                    del dz
                del p
        ce = ce * valid  # ignored positions (any label) count as zero
        per_position = tau * (ce + const) * valid if robust else ce
        ctx.trained = [need for need in needs[10:]]
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                              None if grad_b is None else grad_b.to(bias.dtype),
                              *[g.to(p.dtype) for g, p in zip(grad_params, trained)])
        ce_mean = ce.sum() / count
        ctx.mark_non_differentiable(ce_mean, tau)
        return per_position.sum() / count, ce_mean, tau

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_tau):
        grad_h, grad_w, grad_b, *grad_params = ctx.saved_tensors

        def scaled(g):
            return None if g is None else g * grad_loss.to(g.dtype)

        params = iter(grad_params)
        head_grads = [scaled(next(params)) if need else None for need in ctx.trained]
        return (scaled(grad_h), scaled(grad_w), scaled(grad_b), None, None, None, None, None, None, None,
                *head_grads)
