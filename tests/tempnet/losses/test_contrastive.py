"""Contrastive losses against the float64 loop references in contrastive_reference.py."""

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F

from tempnet.losses import ClipLoss, CyClipLoss, ISogCLRLoss, RobustGCLoss, SogCLRLoss

_spec = importlib.util.spec_from_file_location("contrastive_reference",
                                               pathlib.Path(__file__).with_name("contrastive_reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# Four steps over 10 dataset indices with revisits (the state must be reused and moved by gamma).
ID_SCHEDULE = [[0, 1, 2, 3, 4], [5, 6, 2, 7, 0], [3, 8, 9, 1, 5], [0, 2, 4, 6, 8]]


def _features(step, dim=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + step)
    I = F.normalize(torch.randn(5, dim, generator=g, dtype=torch.float64), dim=1)
    T = F.normalize(I + 0.7 * torch.randn(5, dim, generator=g, dtype=torch.float64), dim=1)
    tau_i = 0.005 + 0.045 * torch.rand(5, generator=g, dtype=torch.float64)
    tau_t = 0.005 + 0.045 * torch.rand(5, generator=g, dtype=torch.float64)
    return I.to(dtype), T.to(dtype), tau_i.to(dtype), tau_t.to(dtype)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_robust_gc_loss_matches_reference_over_steps(dtype, rtol):
    gamma, rho = 0.8, 7.0
    loss_fn = RobustGCLoss(num_samples=10, gamma=gamma, rho=rho).to(dtype)  # state in the test's precision
    state = {"image": {}, "text": {}}
    for step, ids in enumerate(ID_SCHEDULE):
        I, T, ti, tt = _features(step, dtype=dtype)
        I, T, ti, tt = (x.requires_grad_() for x in (I, T, ti, tt))
        ids = torch.tensor(ids)
        contrastive, temperature = loss_fn(I, T, ids, ids, ti, tt)
        (contrastive + temperature).backward()

        I64, T64 = I.detach().double().requires_grad_(), T.detach().double().requires_grad_()
        r_con, r_temp, (tw_i, tw_t) = ref.moving_average_step(
            I64, T64, ids.tolist(), ids.tolist(), ti.detach().double().tolist(), tt.detach().double().tolist(),
            state, gamma, rho)
        r_con.backward()
        assert contrastive.item() == pytest.approx(r_con.item(), rel=rtol, abs=1e-6)
        assert temperature.item() == pytest.approx(r_temp, rel=rtol, abs=1e-6)
        assert torch.allclose(I.grad.double(), I64.grad, rtol=rtol, atol=1e-5)
        assert torch.allclose(T.grad.double(), T64.grad, rtol=rtol, atol=1e-5)
        # d(temperature)/d(tau_i) = tau_weight_i / B
        assert torch.allclose(ti.grad.double(), torch.tensor(tw_i, dtype=torch.float64) / 5, rtol=rtol, atol=1e-6)
        assert torch.allclose(tt.grad.double(), torch.tensor(tw_t, dtype=torch.float64) / 5, rtol=rtol, atol=1e-6)
    # the state is what the reference holds: s * exp(b) is the moving average S
    for key, st in (("image", loss_fn.image_state), ("text", loss_fn.text_state)):
        for idx, S in state[key].items():
            got = (st.s[idx].double() * torch.exp(st.b[idx].double())).item()
            assert got == pytest.approx(S, rel=1e-3)
        assert st.seen.sum().item() == len(state[key])


def test_robust_gc_loss_gradcheck_first_visit():
    """On a first visit the estimator is exact, so the sum of both outputs is the DRO objective and its
    autograd gradient (with the weights detached inside) must equal the numerical gradient."""
    I, T, ti, tt = (x.requires_grad_() for x in _features(0, dim=4, dtype=torch.float64))
    ids = torch.arange(5)
    fresh = RobustGCLoss(num_samples=5, gamma=0.8, rho=3.0)
    fresh.double()

    def total(I, T, ti, tt):
        contrastive, temperature = copy.deepcopy(fresh)(I, T, ids, ids, ti, tt)
        return contrastive + temperature

    assert torch.autograd.gradcheck(total, (I, T, ti, tt), eps=1e-7, atol=1e-5)


def test_sogclr_matches_reference():
    loss_fn = SogCLRLoss(num_samples=10, gamma=0.9, tau=0.02)
    state = {"image": {}, "text": {}}
    for step, ids in enumerate(ID_SCHEDULE):
        I, T, _, _ = _features(step)
        I.requires_grad_()
        loss = loss_fn(I, T, torch.tensor(ids), torch.tensor(ids))
        loss.backward()
        I64 = I.detach().double().requires_grad_()
        r_con, _, _ = ref.moving_average_step(I64, T.double(), ids, ids, [0.02] * 5, [0.02] * 5, state, 0.9, 0.0)
        r_con.backward()
        assert loss.item() == pytest.approx(r_con.item(), rel=2e-4, abs=1e-6)
        assert torch.allclose(I.grad.double(), I64.grad, rtol=2e-4, atol=1e-5)


def test_isogclr_matches_reference_and_moves_taus():
    gamma, rho, eta, beta = 0.8, 6.0, 0.001, 0.5
    loss_fn = ISogCLRLoss(num_samples=10, gamma=gamma, rho=rho, tau_init=0.02, eta=eta, beta=beta)
    state = {"image": {}, "text": {}}
    tau = {"image": [0.02] * 10, "text": [0.02] * 10}
    u = {"image": [0.0] * 10, "text": [0.0] * 10}
    for step, ids in enumerate(ID_SCHEDULE):
        I, T, _, _ = _features(step)
        loss = loss_fn(I, T, torch.tensor(ids), torch.tensor(ids))
        r_con, _, (tw_i, tw_t) = ref.moving_average_step(
            I.double(), T.double(), ids, ids, [tau["image"][k] for k in ids], [tau["text"][k] for k in ids],
            state, gamma, rho)
        assert loss.item() == pytest.approx(r_con.item(), rel=2e-4, abs=1e-6)
        for side, tw in (("image", tw_i), ("text", tw_t)):
            for k, w in zip(ids, tw):
                u[side][k] = (1 - beta) * u[side][k] + beta * w
                tau[side][k] = min(max(tau[side][k] - eta * u[side][k], 0.005), 0.05)
    assert loss_fn.tau_image.tolist() == pytest.approx(tau["image"], rel=1e-4)
    assert loss_fn.tau_text.tolist() == pytest.approx(tau["text"], rel=1e-4)
    assert len(set(round(t, 6) for t in loss_fn.tau_image.tolist())) > 2  # the taus did move, per index


def test_clip_and_cyclip_match_reference():
    I, T, _, _ = _features(3, dtype=torch.float64)
    assert ClipLoss(tau=0.05)(I, T).item() == pytest.approx(ref.clip_loss(I.tolist(), T.tolist(), 0.05), rel=1e-9)
    got = CyClipLoss(tau=0.05, lambda_inmodal=0.3, lambda_crossmodal=0.2)(I, T).item()
    assert got == pytest.approx(ref.cyclip_loss(I.tolist(), T.tolist(), 0.05, 0.3, 0.2), rel=1e-9)
    assert torch.autograd.gradcheck(lambda a, b: CyClipLoss(0.05)(a, b), (I.requires_grad_(), T.requires_grad_()))


def test_state_is_in_state_dict_and_moves_with_to():
    loss_fn = ISogCLRLoss(num_samples=7)
    keys = set(loss_fn.state_dict())
    assert {"image_state.s", "image_state.b", "image_state.seen", "text_state.s", "tau_image", "u_text"} <= keys
    robust = RobustGCLoss(num_samples=7)
    I, T, ti, tt = _features(0)
    robust(I, T, torch.arange(5), torch.arange(5), ti, tt)
    restored = RobustGCLoss(num_samples=7)
    restored.load_state_dict(robust.state_dict())
    assert torch.equal(restored.image_state.s, robust.image_state.s) and restored.image_state.seen[:5].all()
    assert robust.to(torch.float64).image_state.s.dtype == torch.float64


def test_bad_ids_and_shapes_are_named():
    I, T, ti, tt = _features(0)
    loss_fn = RobustGCLoss(num_samples=4)
    with pytest.raises(IndexError, match=r"dataset id 4 is outside the per-sample state \[0, 4\)"):
        loss_fn(I, T, torch.arange(5), torch.arange(5), ti, tt)
    with pytest.raises(IndexError, match="dataset id -1"):
        SogCLRLoss(num_samples=10)(I, T, torch.tensor([0, 1, 2, 3, -1]), torch.arange(5))
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(I, T[:4])
    with pytest.raises(ValueError, match="one tau per image"):
        RobustGCLoss(num_samples=10)(I, T, torch.arange(5), torch.arange(5), ti[:4], tt)
    with pytest.raises(ValueError, match="NaN"):
        ClipLoss()(I * float("nan"), T)
    with pytest.raises(ValueError, match="gamma"):
        SogCLRLoss(num_samples=10, gamma=0.0)
    with pytest.raises(ValueError, match="tau_min must be smaller"):
        ISogCLRLoss(num_samples=10, tau_min=0.05, tau_max=0.01)
    with pytest.raises(ValueError, match="rho"):
        RobustGCLoss(num_samples=10, rho=-1.0)


def test_half_precision_features_small_tau_finite():
    I, T, _, _ = _features(1)
    I, T = I.half().requires_grad_(), T.half().requires_grad_()
    tau = torch.full((5,), 0.005, requires_grad=True)
    c, t = RobustGCLoss(num_samples=5)(I, T, torch.arange(5), torch.arange(5), tau, tau)
    (c + t).backward()
    assert torch.isfinite(c) and torch.isfinite(t) and torch.isfinite(I.grad).all() and torch.isfinite(tau.grad).all()
