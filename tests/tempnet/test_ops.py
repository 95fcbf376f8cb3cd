"""The fused LM head + temperature head + loss against the unfused autograd path and float64 gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tempnet.losses.lm import objective_terms
from tempnet.modules import FixedTemperature, GlobalTemperature, TempNet
from tempnet.losses.objectives import OBJECTIVES
from tempnet.ops import default_chunk_size, linear_tempnet_dro_loss

N, D, V = 23, 16, 37  # chunk sizes 5 and 7 do not divide N


def _head(objective: str, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(3)
    if objective == "ce":
        return FixedTemperature(0.7)
    if objective == "dro":
        return GlobalTemperature(0.6, 0.05, 2.0)
    net = TempNet(V, hidden_size=8, tau_min=0.05, tau_max=2.0, dropout=dropout)
    with torch.no_grad():  # a tau that varies a lot between positions
        net.proj[0].weight.mul_(30.0)
        net.last.weight.normal_(0.0, 40.0)
    return net


def _inputs(dtype=torch.float32, bias=True):
    torch.manual_seed(0)
    h = (torch.randn(N, D) * 2).to(dtype).requires_grad_()
    w = torch.randn(V, D).to(dtype).requires_grad_()
    b = torch.randn(V).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, V, (N,))
    y[[0, 4, 5, 17]] = -100
    return h, w, b, y


def _unfused(h, w, b, y, head, objective, rho, chunk=None):
    """logits, tau = head(logits.detach()) (chunk by chunk when `chunk`, as the fused op draws dropout), loss."""
    z = F.linear(h, w, b)  # [N, V]
    zd = z.detach()
    tau = head(zd) if chunk is None else torch.cat([head(zd[i:i + chunk]) for i in range(0, N, chunk)])
    return objective_terms(z, y, tau, OBJECTIVES[objective].robust, rho)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _close(got, want, rtol=1e-4):
    """float32 agreement: relative, plus an absolute slack scaled to the tensor's largest entry."""
    return torch.allclose(got, want, rtol=rtol, atol=rtol * 0.1 * want.abs().max().item() + 1e-7)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("chunk", [5, 7, 100])
def test_values_and_gradients_equal_the_unfused_path(objective, chunk):
    h, w, b, y = _inputs()
    head = _head(objective)
    params = [h, w, b, *head.parameters()]
    fused = linear_tempnet_dro_loss(h, w, y, head, 8.0, objective=objective, lm_head_bias=b, chunk_size=chunk)
    ref = _unfused(h, w, b, y, head, objective, 8.0)
    for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max"):
        assert torch.allclose(fused[key], ref[key], rtol=1e-5, atol=1e-6), key
    assert fused["tau"].shape == (N,) and not fused["tau"].requires_grad
    assert not fused["ce"].requires_grad
    assert torch.allclose(fused["tau"], head(F.linear(h, w, b).detach()).reshape(-1), atol=1e-6)
    if objective.startswith("tempnet"):
        assert fused["tau"].std() > 0.1  # the test would not see a per-position tau bug otherwise
    got, want = _grads(fused["loss"], params), _grads(ref["loss"], params)
    assert len(got) == 3 + len(list(head.parameters()))
    for g, r in zip(got, want):
        assert _close(g, r), (g - r).abs().max()


class _DoubleHead(nn.Module):
    """A float64 temperature head with dropout: tau = 0.2 + softplus(dropout(z) @ a + c) [C, 1]."""

    def __init__(self, dropout: float):
        super().__init__()
        self.a = nn.Parameter(torch.randn(V, 1, dtype=torch.float64) * 0.3)
        self.c = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.drop = nn.Dropout(dropout)

    def forward(self, z):
        return 0.2 + F.softplus(self.drop(z) @ self.a + self.c)


class _TableHead(nn.Module):
    """A float64 head whose tau ignores the logits' values: tau = 0.2 + softplus(dropout(table[rows]) + c).

    Its k-th call serves the rows of chunk k % chunks (the op calls it once per chunk, in order, in the
    forward and again in the backward), so finite differences in hidden/weight see the stop-gradient.
    """

    def __init__(self, chunk: int, dropout: float):
        super().__init__()
        self.chunk, self.calls = chunk, 0
        self.table = nn.Parameter(torch.randn(N, dtype=torch.float64))
        self.c = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.drop = nn.Dropout(dropout)

    def forward(self, z):
        k = self.calls % math.ceil(N / self.chunk)
        self.calls += 1
        rows = self.table[k * self.chunk:(k + 1) * self.chunk]
        assert rows.shape[0] == z.shape[0]
        return 0.2 + F.softplus(self.drop(rows) + self.c)[:, None]


@pytest.mark.parametrize("objective", ["tempnet_dro", "tempnet_ce"])
def test_gradcheck_float64_with_dropout(objective):
    """The hand-derived gradients against finite differences, with dropout on in the head."""
    torch.manual_seed(1)
    head = _TableHead(chunk=6, dropout=0.3).train()
    h = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N,))
    y[[1, 2]] = -100

    def fn(h, w, b, table, c):  # table, c are the head's own parameters, perturbed in place by gradcheck
        torch.manual_seed(7)  # the same dropout masks for every evaluation
        return linear_tempnet_dro_loss(h, w, y, head, 3.0, objective=objective, lm_head_bias=b, chunk_size=6)["loss"]

    assert torch.autograd.gradcheck(fn, (h, w, b, head.table, head.c), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_head_gradient_float64_against_finite_differences():
    """d loss / d(head parameters) by central differences, with dropout in train mode."""
    torch.manual_seed(2)
    head = _DoubleHead(dropout=0.3).train()
    h = torch.randn(N, D, dtype=torch.float64)
    w = torch.randn(V, D, dtype=torch.float64)
    y = torch.randint(0, V, (N,))
    y[3] = -100
    for objective in ("tempnet_dro", "tempnet_ce"):
        def loss():
            torch.manual_seed(7)
            return linear_tempnet_dro_loss(h, w, y, head, 3.0, objective=objective, chunk_size=4)["loss"]

        ga, gc = torch.autograd.grad(loss(), (head.a, head.c))
        with torch.no_grad():
            for param, grad in ((head.a, ga), (head.c, gc)):
                for idx in [(0, 0), (5, 0), (V - 1, 0)] if param.dim() == 2 else [(0,)]:
                    old = param[idx].item()
                    param[idx] = old + 1e-6
                    up = loss().item()
                    param[idx] = old - 1e-6
                    down = loss().item()
                    param[idx] = old
                    assert grad[idx].item() == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-8)


def test_dropout_mask_of_the_forward_serves_the_gradients():
    """TempNet with dropout in train mode: gradients equal autograd with the same per-chunk masks."""
    h, w, b, y = _inputs()
    head = _head("tempnet_dro", dropout=0.5).train()
    params = [h, w, b, *head.parameters()]
    torch.manual_seed(11)
    fused = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=7)
    after_forward = torch.get_rng_state()
    got = _grads(fused["loss"], params)
    assert torch.equal(torch.get_rng_state(), after_forward)  # the backward leaves the global RNG alone
    torch.manual_seed(11)
    ref = _unfused(h, w, b, y, head, "tempnet_dro", 8.0, chunk=7)
    assert torch.allclose(fused["loss"], ref["loss"], rtol=1e-5)
    for g, r in zip(got, _grads(ref["loss"], params)):
        assert _close(g, r), (g - r).abs().max()
    # and dropout is really on: another seed gives another loss
    torch.manual_seed(12)
    other = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=7)["loss"]
    assert not torch.allclose(other, fused["loss"])


def test_frozen_lm_head_trains_only_the_head():
    h, w, b, y = _inputs(bias=False)
    h, w = h.detach(), w.detach()
    head = _head("tempnet_dro")
    fused = linear_tempnet_dro_loss(h, w, y, head, 8.0, chunk_size=6)
    ref = _unfused(h, w, None, y, head, "tempnet_dro", 8.0)
    params = list(head.parameters())
    for g, r in zip(_grads(fused["loss"], params), _grads(ref["loss"], params)):
        assert _close(g, r)


def test_robust_loss_float64_by_a_loop():
    """An independent per-position loop: tau * log((1/V) sum_k exp((z_k - z_y)/tau)) + tau * rho."""
    h, w, b, y = _inputs()
    head = _head("tempnet_dro")
    out = linear_tempnet_dro_loss(h, w, y, head, 6.5, lm_head_bias=b, chunk_size=4)
    z = (h.double() @ w.double().t() + b.double()).detach()
    tau = head(z.float()).double().reshape(-1)
    terms = [tau[i] * (torch.logsumexp((z[i] - z[i, y[i]]) / tau[i], 0) - math.log(V)) + tau[i] * 6.5
             for i in range(N) if y[i] != -100]
    assert out["loss"].item() == pytest.approx((sum(terms) / len(terms)).item(), rel=1e-5)


def test_all_positions_ignored_gives_zero_loss_and_zero_gradients():
    h, w, b, _ = _inputs()
    y = torch.full((N,), -100)
    head = _head("tempnet_dro")
    out = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=5)
    ref = _unfused(h, w, b, y, head, "tempnet_dro", 8.0)
    assert out["loss"].item() == 0.0 and torch.allclose(out["tau_mean"], ref["tau_mean"])
    gh, gw = _grads(out["loss"], [h, w])
    assert gh.abs().max() == 0 and gw.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_match_the_unfused_half_path(dtype):
    h, w, b, y = _inputs(dtype)
    head = _head("tempnet_dro")
    fused = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=6)
    ref = _unfused(h, w, b, y, head, "tempnet_dro", 8.0)
    assert fused["loss"].dtype == torch.float32 and torch.isfinite(fused["loss"])
    assert torch.allclose(fused["loss"], ref["loss"], rtol=1e-3)
    got, want = _grads(fused["loss"], [h, w, b]), _grads(ref["loss"], [h, w, b])
    for g, r in zip(got, want):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert torch.allclose(g.float(), r.float(), rtol=5e-2, atol=5e-2 * r.float().abs().max().item())


def test_default_chunk_size_bounds_the_chunk_logits():
    assert default_chunk_size(32000) * 32000 <= 2 ** 23 < (default_chunk_size(32000) + 1) * 32000
    assert default_chunk_size(10 ** 9) == 1


def test_bad_inputs_give_clear_errors():
    h, w, b, y = _inputs()
    head = _head("tempnet_dro")
    with pytest.raises(ValueError, match=r"hidden must be \[N, d\]"):
        linear_tempnet_dro_loss(h[None], w, y, head, 8.0)
    with pytest.raises(ValueError, match=r"lm_head_weight must be \[V, d\] with d=16"):
        linear_tempnet_dro_loss(h, w[:, :5], y, head, 8.0)
    with pytest.raises(ValueError, match=r"labels must be \[N\]=23"):
        linear_tempnet_dro_loss(h, w, y[:-1], head, 8.0)
    with pytest.raises(ValueError, match="vocabulary size 37 but lm_head_weight"):
        linear_tempnet_dro_loss(h, w[:-1], y.clamp(max=V - 2), head, 8.0)
    with pytest.raises(ValueError, match=r"lm_head_bias must be \[V\]=37"):
        linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b[:-1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 37\)"):
        linear_tempnet_dro_loss(h, w, torch.full((N,), V), head, 8.0)
    with pytest.raises(ValueError, match="unknown objective 'dpo'"):
        linear_tempnet_dro_loss(h, w, y, head, 8.0, objective="dpo")
    with pytest.raises(ValueError, match="rho"):
        linear_tempnet_dro_loss(h, w, y, head, -1.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_tempnet_dro_loss(h, w, y, head, 8.0, chunk_size=0)


def test_upstream_gradient_scales_every_gradient_and_no_grad_mode_skips_them():
    h, w, b, y = _inputs()
    head = _head("tempnet_dro")
    params = [h, w, b, *head.parameters()]
    fused = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=6)
    ref = _unfused(h, w, b, y, head, "tempnet_dro", 8.0)
    for g, r in zip(_grads(-2.5 * fused["loss"], params), _grads(-2.5 * ref["loss"], params)):
        assert _close(g, r)
    with torch.no_grad():
        quiet = linear_tempnet_dro_loss(h, w, y, head, 8.0, lm_head_bias=b, chunk_size=6)
    assert quiet["loss"].grad_fn is None and torch.allclose(quiet["loss"], fused["loss"])
