"""TempNet and PrototypeTempNet against independent float64 loop implementations."""

import math

import pytest
import torch

from tempnet import FixedTemperature, GlobalTemperature, PrototypeTempNet, TempNet


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def tempnet_reference(net: TempNet, z: list[float]) -> float:
    """The paper's LLM TempNet (Qiu et al., ICML 2024) for one position, in python floats (float64), dropout off."""
    sd = {k: v.double().tolist() for k, v in net.state_dict().items()}
    top = max(z)
    shifted = [v - top for v in z]
    norm = math.sqrt(sum(v * v for v in shifted))
    x = [v / max(norm, 1e-12) for v in shifted]
    w0, b0, w3, b3 = sd["proj.0.weight"], sd["proj.0.bias"], sd["proj.3.weight"], sd["proj.3.bias"]
    a = [_sigmoid(sum(w0[m][k] * x[k] for k in range(len(x))) + b0[m]) for m in range(len(b0))]
    h = [sum(w3[m][k] * a[k] for k in range(len(a))) + b3[m] for m in range(len(b3))]
    scale = math.exp(sd["scaler"][0])
    e = [math.exp(v / scale) for v in h]
    w = [v / sum(e) for v in e]
    M = len(h)
    r = sum(sd["last.weight"][0][m] * (w[m] - 1.0 / M) * h[m] for m in range(M)) + sd["last.bias"][0]
    return (net.tau_max - net.tau_min) * _sigmoid(r) + net.tau_min


def _randomised(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


def test_tempnet_matches_loop_reference():
    torch.manual_seed(0)
    net = _randomised(TempNet(vocab_size=37, hidden_size=8, tau_min=0.05, tau_max=3.0))
    logits = torch.randn(2, 3, 37) * 4
    tau = net(logits)
    assert tau.shape == (2, 3, 1) and tau.dtype == torch.float32
    for idx in [(0, 0), (0, 2), (1, 1)]:
        expected = tempnet_reference(net, logits[idx].double().tolist())
        assert tau[idx].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with torch.no_grad():  # the output squash: r -> +inf gives tau_max, r -> -inf gives tau_min
        net.last.bias.fill_(1e4)
        assert torch.allclose(net(logits), torch.full_like(tau, 3.0))
        net.last.bias.fill_(-1e4)
        assert torch.allclose(net(logits), torch.full_like(tau, 0.05))


def test_tempnet_is_shift_invariant_and_dtype_agnostic():
    net = _randomised(TempNet(vocab_size=50, hidden_size=16))
    z = torch.randn(5, 50) * 3
    assert torch.allclose(net(z), net(z + 123.0), atol=1e-6)  # the max shift makes training == generation
    assert torch.allclose(net(z.half()), net(z.half().float()), atol=1e-6)
    assert torch.allclose(net.double()(z.double()), net.float()(z), atol=1e-6)
    half = _randomised(TempNet(vocab_size=50, hidden_size=16)).half()  # fp16 weights, as released
    tau = half(z)  # computed in float32 from the fp16 weights: equal to the float64 loop on those weights
    assert tau.dtype == torch.float32 and {p.dtype for p in half.parameters()} == {torch.float16}
    for i in range(5):
        assert tau[i].item() == pytest.approx(tempnet_reference(half, z[i].double().tolist()), rel=1e-5, abs=1e-6)


def test_tempnet_state_dict_names_and_init():
    net = TempNet(vocab_size=10)
    assert set(net.state_dict()) == {"proj.0.weight", "proj.0.bias", "proj.3.weight", "proj.3.bias", "scaler",
                                     "last.weight", "last.bias"}
    assert net.state_dict()["proj.0.weight"].shape == (256, 10)
    assert net.scaler.shape == (1,)  # the released checkpoints' shape (and ZeRO/FSDP reject 0-dim parameters)
    assert (net.last.weight == 1).all() and (net.last.bias == 0).all() and net.scaler.item() == 0.0


def test_tempnet_bad_inputs():
    with pytest.raises(ValueError, match="tau_min must be smaller than tau_max"):
        TempNet(10, tau_min=2.0, tau_max=1.0)
    with pytest.raises(ValueError, match="tau_min must be positive"):
        TempNet(10, tau_min=0.0)
    net = TempNet(10)
    with pytest.raises(ValueError, match="vocabulary size 10 .* last dimension 12"):
        net(torch.randn(3, 12))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.tensor([[float("nan")] * 10]))


def prototype_reference(net: PrototypeTempNet, f: list[float]) -> float:
    sd = {k: v.double().tolist() for k, v in net.state_dict().items()}
    d = len(f)
    x = [_sigmoid(sum(sd["proj.weight"][a][b] * f[b] for b in range(d)) + sd["proj.bias"][a]) for a in range(d)]
    protos = []
    for row in sd["prototypes"]:
        n = math.sqrt(sum(v * v for v in row))
        protos.append([v / n for v in row])
    p = [sum(x[a] * q[a] for a in range(d)) for q in protos]
    scale = math.exp(sd["scaler"][0])
    e = [math.exp(v / scale) for v in p]
    w = [v / sum(e) for v in e]
    M = len(p)
    r = sum(sd["linear_1.weight"][0][m] * (w[m] - 1.0 / M) * _sigmoid(p[m]) for m in range(M)) + sd["linear_1.bias"][0]
    return (net.tau_max - net.tau_min) * _sigmoid(r) + net.tau_min


def test_prototype_tempnet_matches_loop_reference():
    torch.manual_seed(1)
    net = PrototypeTempNet(feature_dim=6, num_prototypes=5).eval()
    with torch.no_grad():
        net.linear_1.weight.normal_()
        net.scaler.fill_(math.log(0.3))
    feats = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    tau = net(feats)
    assert tau.shape == (4,) and tau.dtype == torch.float32
    for i in range(4):
        assert tau[i].item() == pytest.approx(prototype_reference(net, feats[i].double().tolist()), rel=1e-5)
    assert set(net.state_dict()) == {"proj.weight", "proj.bias", "scaler", "prototypes", "linear_1.weight",
                                     "linear_1.bias"}
    fresh = PrototypeTempNet(feature_dim=6, num_prototypes=5)
    assert fresh.scaler.item() == pytest.approx(math.log(0.01))
    assert (fresh.linear_1.weight == 1).all() and (fresh.linear_1.bias == 0).all()


def test_prototype_init_and_errors():
    net = PrototypeTempNet(feature_dim=4, num_prototypes=3)
    emb = torch.randn(3, 4)
    net.init_prototypes(emb)
    assert torch.equal(net.prototypes.data, emb)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        net.init_prototypes(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"features \[B, 4\]"):
        net(torch.randn(2, 5))
    with pytest.raises(ValueError, match="tau_min must be smaller"):
        PrototypeTempNet(4, tau_min=0.05, tau_max=0.05)


def test_global_and_fixed_temperature():
    g = GlobalTemperature(tau_init=0.7, tau_min=0.1, tau_max=2.0)
    tau = g(torch.randn(3, 4, 9))
    assert tau.shape == (3, 4, 1) and torch.allclose(tau, torch.full_like(tau, 0.7), atol=1e-6)
    tau.sum().backward()
    assert g.logit.grad is not None
    f = FixedTemperature(0.5)(torch.randn(2, 9))
    assert f.shape == (2, 1) and (f == 0.5).all()
    with pytest.raises(ValueError, match="strictly inside"):
        GlobalTemperature(tau_init=3.0, tau_min=0.1, tau_max=2.0)


def test_uncentred_pooling_matches_loop_reference_and_keeps_the_names():
    torch.manual_seed(0)
    net = _randomised(TempNet(vocab_size=23, hidden_size=7, tau_min=0.05, tau_max=3.0, pooling="uncentred"))
    assert set(net.state_dict()) == set(TempNet(23, 7).state_dict())
    logits = torch.randn(4, 23) * 3
    tau = net(logits)
    for i in range(4):
        sd = {k: v.double().tolist() for k, v in net.state_dict().items()}
        z = logits[i].double().tolist()
        x = [v - max(z) for v in z]
        norm = math.sqrt(sum(v * v for v in x))
        a = [_sigmoid(sum(w * v / norm for w, v in zip(row, x)) + b) for row, b in zip(sd["proj.0.weight"], sd["proj.0.bias"])]
        h = [sum(w * v for w, v in zip(row, a)) + b for row, b in zip(sd["proj.3.weight"], sd["proj.3.bias"])]
        e = [math.exp(v / math.exp(sd["scaler"][0])) for v in h]
        r = sum(wl * (ev / sum(e)) * hv for wl, ev, hv in zip(sd["last.weight"][0], e, h)) + sd["last.bias"][0]
        assert tau[i].item() == pytest.approx(0.05 + 2.95 * _sigmoid(r), rel=1e-5)
    centred = _randomised(TempNet(vocab_size=23, hidden_size=7, tau_min=0.05, tau_max=3.0))
    assert not torch.allclose(centred(logits), tau)  # the option changes the module
    assert "pooling=uncentred" in repr(net) and "pooling" not in repr(centred)
    with pytest.raises(ValueError, match="pooling must be one of"):
        TempNet(10, pooling="mean")


@pytest.mark.parametrize("pooling, stuck", [("centred", True), ("uncentred", False)])
def test_centred_pooling_has_a_saddle_at_constant_h(pooling, stuck):
    """At h constant across the M units the paper's pooling sends no gradient to h (w = 1/M)."""
    net = TempNet(vocab_size=16, hidden_size=8, pooling=pooling).eval()
    with torch.no_grad():
        net.proj[3].weight.zero_()
        net.proj[3].bias.fill_(0.3)  # h = 0.3 for every unit and every input
    tau = net(torch.randn(5, 16))
    tau.sum().backward()
    grad_h = net.proj[3].bias.grad  # dtau/dh summed over rows: the gradient reaching h
    for g in (grad_h, net.proj[3].weight.grad):  # float32 round-off vs. an O(0.1) gradient
        assert g.abs().max() < 1e-6 if stuck else g.abs().max() > 1e-3
