"""The robust next-token loss and the ablation objectives against independent computations."""

import math

import pytest
import torch

from tempnet.losses import OBJECTIVES, build_objective, dro_lm_loss, tempered_ce_loss
from tempnet.modules import GlobalTemperature, TempNet


def dro_reference(z: list[float], y: int, tau: float, rho: float) -> float:
    """tau * log((1/V) sum_k exp((z_k - z_y)/tau)) + tau * rho, in float64, by a loop (shifted by the
    largest exponent, so logits of 1e4 over tau 0.01 do not overflow)."""
    x = [(zk - z[y]) / tau for zk in z]
    m = max(x)
    acc = sum(math.exp(xk - m) for xk in x)
    return tau * (m + math.log(acc / len(z))) + tau * rho


def test_dro_loss_matches_reference_and_ignores_positions():
    torch.manual_seed(0)
    N, V, rho = 6, 11, 2.5
    z = torch.randn(N, V) * 3
    y = torch.randint(0, V, (N,))
    y[2] = y[5] = -100
    tau = torch.rand(N) * 1.5 + 0.2
    per = dro_lm_loss(z, y, tau, rho, reduction="none")
    ref = [0.0 if y[i] == -100 else dro_reference(z[i].double().tolist(), int(y[i]), float(tau[i]), rho) for i in range(N)]
    assert per.dtype == torch.float32
    assert per.tolist() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    valid = [r for i, r in enumerate(ref) if y[i] != -100]
    assert dro_lm_loss(z, y, tau[:, None], rho).item() == pytest.approx(sum(valid) / len(valid), rel=1e-5)
    assert dro_lm_loss(z, y, tau, rho, reduction="sum").item() == pytest.approx(sum(valid), rel=1e-5)
    # an ignored position contributes nothing, whatever its tau
    tau2 = tau.clone()
    tau2[2] = 100.0
    assert dro_lm_loss(z, y, tau2, rho).item() == pytest.approx(dro_lm_loss(z, y, tau, rho).item(), rel=1e-6)


def test_dro_loss_gradcheck():
    torch.manual_seed(1)
    z = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(4, dtype=torch.float64) + 0.3).requires_grad_()
    y = torch.tensor([0, 3, -100, 6])
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(lambda a, b: dro_lm_loss(a, y, b, 1.3, reduction=reduction), (z, tau))


def test_float32_gradient_matches_float64_formula():
    """Half/float32 inputs are computed in float32; their gradients match an independent float64 form."""
    torch.manual_seed(2)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    y = torch.tensor([1, -100, 4])
    z32, t32 = z.detach().float().requires_grad_(), tau.detach().float().requires_grad_()
    loss32 = dro_lm_loss(z32, y, t32, 0.7)
    assert loss32.dtype == torch.float32
    loss32.backward()
    valid = y != -100
    zy = z.gather(1, y.clamp(min=0)[:, None])
    per = tau * torch.logsumexp((z - zy) / tau[:, None], dim=1) + tau * (0.7 - math.log(5))
    ((per * valid).sum() / valid.sum()).backward()
    assert torch.allclose(z32.grad.double(), z.grad, atol=1e-5)
    assert torch.allclose(t32.grad.double(), tau.grad, atol=1e-5)


def test_dro_identity_optimal_tau_gives_kl_rho():
    """For fixed logits the minimising tau satisfies KL(softmax(z/tau) || uniform) = rho."""
    torch.manual_seed(3)
    V, rho = 50, 0.8
    z = torch.randn(1, V) * 4
    y = torch.tensor([7])
    taus = torch.logspace(-2, 2, 4001)
    losses = torch.stack([dro_lm_loss(z.double(), y, torch.tensor([t]), rho) for t in taus.tolist()])
    i = int(losses.argmin())
    assert 0 < i < len(taus) - 1, "the minimiser must be interior"
    lo, hi = taus[i - 1].item(), taus[i + 1].item()
    for _ in range(60):  # golden-section refinement
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        fa = dro_lm_loss(z, y, torch.tensor([a]), rho).item()
        fb = dro_lm_loss(z, y, torch.tensor([b]), rho).item()
        lo, hi = (lo, b) if fa < fb else (a, hi)
    tau = (lo + hi) / 2
    p = torch.softmax(z.double()[0] / tau, dim=0)
    kl = float((p * torch.log(p * V)).sum())
    assert kl == pytest.approx(rho, abs=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_logits_are_computed_in_float32(dtype):
    """Logits of 1e4 in fp16 / bf16 with tau 0.01: the loss is float32 and equals the float64 loop on the
    same (rounded) logits; the logits' gradient comes back in their dtype and equals the float64 closed form
    (softmax((z - z_y) / tau) - onehot(y)) / N; TempNet reads half logits as their float32 values."""
    torch.manual_seed(5)
    N, V, rho = 8, 32, 8.0
    z = (torch.randn(N, V) * 1e4).to(dtype).requires_grad_()
    y = torch.randint(0, V, (N,))
    tau = torch.full((N,), 0.01, requires_grad=True)
    loss = dro_lm_loss(z, y, tau, rho=rho)
    loss.backward()
    assert loss.dtype == torch.float32 and z.grad.dtype == dtype and tau.grad.dtype == torch.float32
    z64 = z.detach().double()
    expected = sum(dro_reference(z64[i].tolist(), int(y[i]), 0.01, rho) for i in range(N)) / N
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    p = torch.softmax((z64 - z64.gather(1, y[:, None])) / 0.01, dim=1)
    onehot = torch.nn.functional.one_hot(y, V).double()
    assert torch.allclose(z.grad.double(), (p - onehot) / N, atol=2e-3)
    net = TempNet(V, hidden_size=8, tau_min=0.01).eval()
    tau_half = net(z.detach())
    assert tau_half.dtype == torch.float32 and torch.equal(tau_half, net(z.detach().float()))


def test_bad_inputs_are_named():
    z, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
    with pytest.raises(ValueError, match="rho"):
        dro_lm_loss(z, y, torch.ones(4), rho=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        dro_lm_loss(torch.full((4, 6), float("nan")), y, torch.ones(4), rho=1.0)
    with pytest.raises(ValueError, match="labels must be"):
        dro_lm_loss(z, y[:3], torch.ones(4), rho=1.0)
    with pytest.raises(ValueError, match="tau must be"):
        dro_lm_loss(z, y, torch.ones(5), rho=1.0)
    with pytest.raises(ValueError, match=r"logits must be \[N, V\]"):
        dro_lm_loss(z[None], y, torch.ones(4), rho=1.0)
    with pytest.raises(ValueError, match="reduction"):
        dro_lm_loss(z, y, torch.ones(4), rho=1.0, reduction="avg")
    with pytest.raises(ValueError, match="unknown objective 'foo'"):
        build_objective("foo", 6)


def test_objectives_table():
    torch.manual_seed(4)
    V = 20
    z = (torch.randn(10, V) * 2).requires_grad_()
    y = torch.randint(0, V, (10,))
    assert set(OBJECTIVES) == {"ce", "dro", "tempnet_ce", "tempnet_dro"}
    ce = build_objective("ce", V, tau=1.0)(z, y)
    assert ce["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)
    assert ce["tau_mean"].item() == 1.0 and not list(build_objective("ce", V).parameters())

    dro = build_objective("dro", V, rho=8.0, tau=0.9, tau_min=0.1, tau_max=2.0)
    out = dro(z, y)
    assert isinstance(dro.temperature, GlobalTemperature)
    assert out["loss"].item() == pytest.approx(dro_lm_loss(z, y, torch.full((10,), 0.9), 8.0).item(), rel=1e-5)

    for name, robust in [("tempnet_ce", False), ("tempnet_dro", True)]:
        obj = build_objective(name, V, rho=8.0, hidden_size=16, dropout=0.0)
        out = obj(z, y)
        assert isinstance(obj.temperature, TempNet)
        tau = obj.temperature(z.detach())
        expected = dro_lm_loss(z, y, tau, 8.0) if robust else tempered_ce_loss(z, y, tau)
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        t64 = tau.detach().double().reshape(-1)  # the logged statistics of tau, in float64
        assert [out[k].item() for k in ("tau_mean", "tau_min", "tau_max")] == \
            pytest.approx([t64.mean().item(), t64.min().item(), t64.max().item()], rel=1e-6)
        assert t64.max() - t64.min() > 1e-3  # the statistics would not tell mean, min and max apart otherwise
        z.grad = None
        out["loss"].backward()
        # the temperature source reads detached logits: the model gets the loss gradient only through z
        assert z.grad is not None and obj.temperature.last.weight.grad is not None


def _logit_gradient_with_constant_tau(z, y, tau, robust: bool) -> torch.Tensor:
    """d loss / d z in float64, closed form, tau held constant: per valid position (softmax(z/tau) - onehot(y))
    for the robust loss (tau * CE(z/tau) + const), that divided by tau for CE(z/tau); averaged over valid ones."""
    z, tau = z.double(), tau.double().reshape(-1, 1)
    valid = y != -100
    p = torch.softmax(z / tau, dim=-1)
    onehot = torch.zeros_like(p)
    onehot[valid, y[valid]] = 1.0
    g = (p - onehot) * valid[:, None]
    return (g if robust else g / tau) / valid.sum()


@pytest.mark.parametrize("name", ["tempnet_dro", "tempnet_ce", "dro"])
def test_objective_sends_no_gradient_from_tau_into_the_logits(name):
    """LMObjective reads the logits detached: their gradient is the one with tau a constant of the same value."""
    torch.manual_seed(3)
    N, V = 10, 23
    objective = build_objective(name, V, rho=1.5, tau_min=0.1, tau_max=3.0, hidden_size=8, dropout=0.0).eval()
    if name != "dro":
        with torch.no_grad():  # a TempNet whose tau depends strongly on the logits
            objective.temperature.proj[0].weight.mul_(20.0)
            objective.temperature.last.weight.normal_(0.0, 20.0)
    z = (torch.randn(N, V) * 3).requires_grad_()
    y = torch.randint(0, V, (N,))
    y[4] = -100
    out = objective(z, y)
    out["loss"].backward()
    tau = objective.temperature(z.detach())
    assert tau.std() > 0.05 or name == "dro"  # the test would be blind to a constant tau
    expected = _logit_gradient_with_constant_tau(z.detach(), y, tau.detach(), robust=name != "tempnet_ce")
    assert torch.allclose(z.grad.double(), expected, rtol=1e-4, atol=1e-7)
    # and TempNet itself is trained by the same loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.temperature.parameters())
