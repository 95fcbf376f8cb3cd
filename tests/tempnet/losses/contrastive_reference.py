"""Independent float64 loop implementations of the contrastive losses, for the parity tests.

The per-index state is kept as the plain moving average S of sum_{j != i} exp(A_ij) (no running-max
stabilisation: float64 holds exp(400)), in python dicts; weights are computed by loops.
"""

import math

import torch


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _side(sim_rows, taus, ids, S, gamma, rho):
    """One modality. sim_rows[i][j] with anchor i on the diagonal. Returns (W, contrast, tau_weight)."""
    B = len(sim_rows)
    W, contrast, tau_weight = [[0.0] * B for _ in range(B)], [], []
    for i in range(B):
        d = [sim_rows[i][j] - sim_rows[i][i] for j in range(B)]
        G = sum(math.exp(d[j] / taus[i]) for j in range(B) if j != i)
        key = int(ids[i])
        S[key] = G if key not in S else (1 - gamma) * S[key] + gamma * G
        for j in range(B):
            if j != i:
                W[i][j] = math.exp(d[j] / taus[i]) / S[key]
        contrast.append(sum(W[i][j] * d[j] for j in range(B)))
        tau_weight.append(math.log(S[key] / (B - 1)) + rho - sum(W[i][j] * d[j] / taus[i] for j in range(B)))
    return W, contrast, tau_weight


def moving_average_step(I, T, image_ids, text_ids, tau_image, tau_text, state, gamma, rho):
    """One step of the robust global contrastive loss (and SogCLR/iSogCLR with fixed or per-id tau).

    I, T: float64 tensors [B, d] requiring grad. Returns (contrastive, temperature, tau_weights) where
    contrastive carries the surrogate gradient sum_ij W_ij * grad(d_ij) with W constant.
    """
    B = I.shape[0]
    Il, Tl = I.detach().tolist(), T.detach().tolist()
    sim = [[_dot(Il[i], Tl[j]) for j in range(B)] for i in range(B)]
    simT = [[sim[j][i] for j in range(B)] for i in range(B)]
    Wi, ci, twi = _side(sim, tau_image, image_ids, state["image"], gamma, rho)
    Wt, ct, twt = _side(simT, tau_text, text_ids, state["text"], gamma, rho)
    Wi, Wt = torch.tensor(Wi, dtype=torch.float64), torch.tensor(Wt, dtype=torch.float64)
    # surrogate for the gradient: d_ij = <I_i, T_j> - <I_i, T_i>;  e_ij (text j) = <I_i, T_j> - <I_j, T_j>
    d = (I[:, None, :] * T[None, :, :]).sum(-1) - (I * T).sum(-1)[:, None]
    e = (T[:, None, :] * I[None, :, :]).sum(-1) - (I * T).sum(-1)[:, None]
    value = sum(ci) / B + sum(ct) / B
    surrogate = (Wi * d).sum() / B + (Wt * e).sum() / B
    contrastive = surrogate - surrogate.detach() + value
    temperature = [sum(twi[i] * tau_image[i] for i in range(B)) / B + sum(twt[i] * tau_text[i] for i in range(B)) / B]
    return contrastive, temperature[0], (twi, twt)


def clip_loss(I, T, tau):
    """InfoNCE by loops over rows (forward value only)."""
    B = len(I)
    sim = [[_dot(I[i], T[j]) / tau for j in range(B)] for i in range(B)]
    img = sum(math.log(sum(math.exp(v) for v in sim[i])) - sim[i][i] for i in range(B)) / B
    txt = sum(math.log(sum(math.exp(sim[i][j]) for i in range(B))) - sim[j][j] for j in range(B)) / B
    return (img + txt) / 2


def cyclip_loss(I, T, tau, lam_in, lam_cross):
    B = len(I)
    sim = [[_dot(I[i], T[j]) for j in range(B)] for i in range(B)]
    cross = sum((sim[i][j] - sim[j][i]) ** 2 for i in range(B) for j in range(B)) / B
    inmod = sum((_dot(I[i], I[j]) - _dot(T[i], T[j])) ** 2 for i in range(B) for j in range(B)) / B
    return clip_loss(I, T, tau) + lam_cross * cross + lam_in * inmod


def isogclr_run(steps, num_samples, gamma, rho, tau_init, tau_min, tau_max, eta, beta, grad_clamp):
    """iSogCLR over several steps: per-index taus moved by momentum SGD on the clamped tau-weights.

    steps: [(I, T, ids)] with I, T float64 tensors [B, d] (requiring grad or not) and ids a list.
    Returns ([(contrastive, taus_image_used, taus_text_used, tau_weights)] per step, tau, u), where
    tau and u are {"image": [...], "text": [...]} over all num_samples indices after the last step.
    """
    state = {"image": {}, "text": {}}
    tau = {"image": [tau_init] * num_samples, "text": [tau_init] * num_samples}
    u = {"image": [0.0] * num_samples, "text": [0.0] * num_samples}
    out = []
    for I, T, ids in steps:
        used = {side: [tau[side][k] for k in ids] for side in ("image", "text")}
        contrastive, _, (tw_i, tw_t) = moving_average_step(I, T, ids, ids, used["image"], used["text"], state,
                                                           gamma, rho)
        for side, tw in (("image", tw_i), ("text", tw_t)):
            for pos, k in enumerate(ids):
                w = tw[pos] if grad_clamp is None else min(max(tw[pos], -grad_clamp), grad_clamp)
                u[side][k] = (1 - beta) * u[side][k] + beta * w
                tau[side][k] = min(max(used[side][pos] - eta * u[side][k], tau_min), tau_max)
        out.append((contrastive, used["image"], used["text"], (tw_i, tw_t)))
    return out, tau, u
