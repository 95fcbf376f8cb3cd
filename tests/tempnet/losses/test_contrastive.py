"""Contrastive losses against the float64 loop references in contrastive_reference.py."""

import copy
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

from helpers import load_module
from tempnet import checks
from tempnet.losses import CONTRASTIVE_LOSSES, ClipLoss, CyClipLoss, ISogCLRLoss, RobustGCLoss, SogCLRLoss

ref = load_module("contrastive_reference", pathlib.Path(__file__).with_name("contrastive_reference.py"))

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
        out = loss_fn(I, T, ids, ids, ti, tt)
        out["loss"].backward()
        contrastive, temperature = out["contrastive"], out["temperature"]
        assert out["loss"].item() == pytest.approx(contrastive.item() + temperature.item(), rel=1e-6, abs=1e-7)
        assert out["tau_image"].item() == pytest.approx(ti.mean().item()) and not out["tau_text"].requires_grad

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


def test_running_max_is_the_off_diagonal_row_max():
    """b_i = max(b_old_i, max_{j != i} d_ij / tau_i) per modality (texts over columns), by loops in float64."""
    loss_fn = RobustGCLoss(num_samples=5)
    expected = {"image": [-math.inf] * 5, "text": [-math.inf] * 5}
    for step in range(3):
        I, T, ti, tt = _features(step)
        loss_fn(I, T, torch.arange(5), torch.arange(5), ti, tt)
        sim = (I.double() @ T.double().t()).tolist()
        for i in range(5):
            row = max((sim[i][j] - sim[i][i]) / ti[i].item() for j in range(5) if j != i)
            col = max((sim[j][i] - sim[i][i]) / tt[i].item() for j in range(5) if j != i)
            expected["image"][i], expected["text"][i] = max(expected["image"][i], row), max(expected["text"][i], col)
        assert loss_fn.image_state.b.tolist() == pytest.approx(expected["image"], rel=1e-4, abs=1e-4)
        assert loss_fn.text_state.b.tolist() == pytest.approx(expected["text"], rel=1e-4, abs=1e-4)


def test_robust_gc_loss_gradcheck_first_visit():
    """On a first visit the estimator is exact, so the sum of both outputs is the DRO objective and its
    autograd gradient (with the weights detached inside) must equal the numerical gradient."""
    I, T, ti, tt = (x.requires_grad_() for x in _features(0, dim=4, dtype=torch.float64))
    ids = torch.arange(5)
    fresh = RobustGCLoss(num_samples=5, gamma=0.8, rho=3.0)
    fresh.double()

    def total(I, T, ti, tt):
        return copy.deepcopy(fresh)(I, T, ids, ids, ti, tt)["loss"]

    assert torch.autograd.gradcheck(total, (I, T, ti, tt), eps=1e-7, atol=1e-5)


def test_sogclr_matches_reference():
    loss_fn = SogCLRLoss(num_samples=10, gamma=0.9, tau=0.02)
    state = {"image": {}, "text": {}}
    for step, ids in enumerate(ID_SCHEDULE):
        I, T, _, _ = _features(step)
        I.requires_grad_()
        out = loss_fn(I, T, torch.tensor(ids), torch.tensor(ids))
        loss = out["loss"]
        loss.backward()
        assert out["contrastive"].item() == loss.item() and out["tau_image"].item() == pytest.approx(0.02)
        I64 = I.detach().double().requires_grad_()
        r_con, _, _ = ref.moving_average_step(I64, T.double(), ids, ids, [0.02] * 5, [0.02] * 5, state, 0.9, 0.0)
        r_con.backward()
        assert loss.item() == pytest.approx(r_con.item(), rel=2e-4, abs=1e-6)
        assert torch.allclose(I.grad.double(), I64.grad, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("grad_clamp", [5.0, None])
def test_isogclr_matches_reference_and_moves_taus(grad_clamp):
    """Loss, feature gradient, the taus each step used and the taus after four steps with revisited ids,
    against the float64 loops, with the authors' clamp of the tau-weight to [-5, 5] and without it."""
    gamma, rho, eta, beta = 0.8, 8.0, 0.001, 0.5
    loss_fn = ISogCLRLoss(num_samples=10, gamma=gamma, rho=rho, tau_init=0.02, eta=eta, beta=beta,
                          grad_clamp=grad_clamp)
    batches = [_features(step)[:2] for step in range(len(ID_SCHEDULE))]
    got = []
    for (I, T), ids in zip(batches, ID_SCHEDULE):
        I = I.clone().requires_grad_()
        out = loss_fn(I, T, torch.tensor(ids), torch.tensor(ids))
        out["loss"].backward()
        got.append((out, I.grad))
    steps = [(I.double().requires_grad_(), T.double(), ids) for (I, T), ids in zip(batches, ID_SCHEDULE)]
    reference, tau, _ = ref.isogclr_run(steps, 10, gamma, rho, 0.02, 0.005, 0.05, eta, beta, grad_clamp)
    for (out, grad), (I64, _, _), (r_con, used_i, used_t, _) in zip(got, steps, reference):
        r_con.backward()
        assert out["loss"].item() == pytest.approx(r_con.item(), rel=2e-4, abs=1e-6)
        assert torch.allclose(grad.double(), I64.grad, rtol=2e-4, atol=1e-5)
        assert out["tau_image"].item() == pytest.approx(sum(used_i) / 5, rel=1e-5)
        assert out["tau_text"].item() == pytest.approx(sum(used_t) / 5, rel=1e-5)
    assert loss_fn.tau_image.tolist() == pytest.approx(tau["image"], rel=1e-4)
    assert loss_fn.tau_text.tolist() == pytest.approx(tau["text"], rel=1e-4)
    assert len(set(round(t, 6) for t in loss_fn.tau_image.tolist())) > 2  # the taus did move, per index
    # the clamp was active on this schedule: some tau-weights exceed 5, and clamping changes the taus
    weights = [w for *_, (tw_i, tw_t) in reference for w in tw_i + tw_t]
    assert max(weights) > 5.5 and min(weights) < 4.5
    _, other, _ = ref.isogclr_run(steps, 10, gamma, rho, 0.02, 0.005, 0.05, eta, beta,
                                  None if grad_clamp else 5.0)
    assert max(abs(a - b) for a, b in zip(other["image"], tau["image"])) > 1e-4


def test_isogclr_grad_clamp_validated():
    with pytest.raises(ValueError, match="grad_clamp must be positive"):
        ISogCLRLoss(num_samples=10, grad_clamp=0.0)
    assert ISogCLRLoss(num_samples=10).grad_clamp == 5.0  # the authors' clamp is on by default


def test_clip_and_cyclip_match_reference():
    I, T, _, _ = _features(3, dtype=torch.float64)
    ids = torch.arange(5)
    out = ClipLoss(tau=0.05)(I, T, ids, ids)
    assert out["loss"].item() == pytest.approx(ref.clip_loss(I.tolist(), T.tolist(), 0.05), rel=1e-9)
    assert out["contrastive"].item() == out["loss"].item() and out["tau_text"].item() == 0.05
    out = CyClipLoss(tau=0.05, lambda_inmodal=0.3, lambda_crossmodal=0.2)(I, T, ids, ids)
    assert out["loss"].item() == pytest.approx(ref.cyclip_loss(I.tolist(), T.tolist(), 0.05, 0.3, 0.2), rel=1e-9)
    assert out["contrastive"].item() == pytest.approx(ref.clip_loss(I.tolist(), T.tolist(), 0.05), rel=1e-9)
    assert out["loss"].item() == pytest.approx((out["contrastive"] + out["crossmodal"] + out["inmodal"]).item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: CyClipLoss(0.05)(a, b, ids, ids)["loss"],
                                    (I.requires_grad_(), T.requires_grad_()))


def _call(name, loss_fn, I, T, ids, ti, tt):
    """The trainer's one call: taus only for the TempNet loss (None otherwise), never a branch on the result."""
    return loss_fn(I, T, ids, ids, tau_image=ti if name == "isogclr_tempnet" else None,
                   tau_text=tt if name == "isogclr_tempnet" else None)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_one_interface(name):
    """Every loss returns {"loss" with gradient, named terms that sum to it, detached tau statistics}."""
    cls = CONTRASTIVE_LOSSES[name]
    loss_fn = cls() if name in ("clip", "cyclip") else cls(num_samples=10)
    I, T, ti, tt = (x.requires_grad_() for x in _features(0))
    out = _call(name, loss_fn, I, T, torch.arange(5), ti, tt)
    assert out["loss"].dim() == 0 and out["loss"].requires_grad
    assert {"loss", "contrastive", "tau_image", "tau_text"} <= set(out)
    terms = [v for k, v in out.items() if k not in ("loss", "tau_image", "tau_text")]
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    assert out["loss"].item() == pytest.approx(sum(t.item() for t in terms), rel=1e-5, abs=1e-6)
    expected_tau = {"isogclr_tempnet": (ti.mean().item(), tt.mean().item()), "isogclr": (0.01, 0.01)}
    assert (out["tau_image"].item(), out["tau_text"].item()) == pytest.approx(expected_tau.get(name, (0.01, 0.01)))
    out["loss"].backward()
    assert I.grad is not None and torch.isfinite(I.grad).all()
    if name != "isogclr_tempnet":
        with pytest.raises(ValueError, match="only for RobustGCLoss"):
            loss_fn(I, T, torch.arange(5), torch.arange(5), ti, tt)
    else:
        with pytest.raises(ValueError, match="needs tau_image and tau_text"):
            loss_fn(I, T, torch.arange(5), torch.arange(5))


_COMPOSITIONAL = {f"{side}_state.{k}" for side in ("image", "text") for k in ("s", "b", "seen")}
#: every buffer each loss must checkpoint (typed here, not read from the code)
STATE_KEYS = {"clip": set(), "cyclip": set(), "sogclr": _COMPOSITIONAL, "isogclr_tempnet": _COMPOSITIONAL,
              "isogclr": _COMPOSITIONAL | {"tau_image", "tau_text", "u_image", "u_text"}}


@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_all_per_sample_state_round_trips_through_a_checkpoint(name, tmp_path):
    """The whole state dict is the per-sample state (nothing more, nothing less); after two steps on
    overlapping ids it is saved to a file and loaded into a fresh loss, and the third step of both (on ids
    seen and unseen) gives the same loss and the same state, bit for bit, while a fresh loss gives another."""
    assert set(STATE_KEYS) == set(CONTRASTIVE_LOSSES)
    make = (lambda: CONTRASTIVE_LOSSES[name]()) if name in ("clip", "cyclip") \
        else (lambda: CONTRASTIVE_LOSSES[name](num_samples=10))  # noqa: E731
    loss_fn = make()
    assert set(loss_fn.state_dict()) == STATE_KEYS[name]
    id_steps = [torch.arange(0, 5), torch.arange(3, 8), torch.tensor([6, 7, 8, 9, 0])]
    for step, ids in enumerate(id_steps[:2]):
        I, T, ti, tt = _features(step)
        _call(name, loss_fn, I, T, ids, ti, tt)
    torch.save(loss_fn.state_dict(), tmp_path / "state.pt")
    restored, fresh = make(), make()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    I, T, ti, tt = _features(2)
    outs = [_call(name, f, I, T, id_steps[2], ti, tt) for f in (loss_fn, restored, fresh)]
    assert torch.equal(outs[1]["loss"], outs[0]["loss"])
    a, b = loss_fn.state_dict(), restored.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if STATE_KEYS[name]:
        assert not torch.equal(outs[2]["loss"], outs[0]["loss"])  # the state carried information
        assert a["image_state.seen"].tolist() == [True] * 10 and b["image_state.s"][:8].ne(0).all()
        assert loss_fn.to(torch.float64).image_state.s.dtype == torch.float64  # buffers move with .to()


def test_bad_ids_and_shapes_are_named():
    assert checks.enabled()  # tests/conftest.py sets TEMPNET_CHECKS=1
    I, T, ti, tt = _features(0)
    loss_fn = RobustGCLoss(num_samples=4)
    with pytest.raises(IndexError, match=r"dataset id 4 is outside the per-sample state \[0, 4\)"):
        loss_fn(I, T, torch.arange(5), torch.arange(5), ti, tt)
    with pytest.raises(IndexError, match="dataset id -1"):
        SogCLRLoss(num_samples=10)(I, T, torch.tensor([0, 1, 2, 3, -1]), torch.arange(5))
    with pytest.raises(IndexError, match="dataset id 10"):
        ISogCLRLoss(num_samples=10)(I, T, torch.arange(5), torch.tensor([0, 1, 2, 3, 10]))
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(I, T[:4])
    with pytest.raises(ValueError, match="one tau per image"):
        RobustGCLoss(num_samples=10)(I, T, torch.arange(5), torch.arange(5), ti[:4], tt)
    with pytest.raises(ValueError, match="one image id and one text id per pair"):
        SogCLRLoss(num_samples=10)(I, T, torch.arange(4), torch.arange(5))
    with pytest.raises(ValueError, match="pass image_ids and text_ids"):
        SogCLRLoss(num_samples=10)(I, T, None, None)
    with pytest.raises(ValueError, match="NaN"):
        ClipLoss()(I * float("nan"), T)
    with pytest.raises(ValueError, match="gamma"):
        SogCLRLoss(num_samples=10, gamma=0.0)
    with pytest.raises(ValueError, match="tau_min must be smaller"):
        ISogCLRLoss(num_samples=10, tau_min=0.05, tau_max=0.01)
    with pytest.raises(ValueError, match="rho"):
        RobustGCLoss(num_samples=10, rho=-1.0)


def test_value_checks_follow_the_switch(monkeypatch):
    I, T, ti, tt = _features(0)
    bad = torch.tensor([0, 1, 2, 3, -1])  # -1 would silently index the last sample without the check
    with checks.checking(False):
        assert not checks.enabled()
        SogCLRLoss(num_samples=10)(I, T, bad, torch.arange(5))
        ClipLoss()(I * float("nan"), T)
        with pytest.raises(ValueError, match="same shape"):  # shape checks always run
            ClipLoss()(I, T[:4])
        with checks.checking():
            with pytest.raises(IndexError, match="dataset id -1"):
                SogCLRLoss(num_samples=10)(I, T, bad, torch.arange(5))
        assert not checks.enabled()
    assert checks.enabled()
    checks.set_enabled(None)  # back to the environment variable
    try:
        monkeypatch.setenv("TEMPNET_CHECKS", "0")
        assert not checks.enabled()
        monkeypatch.setenv("TEMPNET_CHECKS", "1")
        assert checks.enabled()
        with pytest.raises(TypeError, match="True, False or None"):
            checks.set_enabled("yes")
    finally:
        checks.set_enabled(None)


class _NoHostSync:
    """Raise on every tensor -> Python conversion (item, bool, int, float, tolist): a host sync on a GPU."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        def fail(*_args, **_kwargs):
            raise AssertionError("a tensor was read on the host")

        for name in self.NAMES:
            self.monkeypatch.setattr(torch.Tensor, name, fail)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()


@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_no_host_reads_on_the_hot_path(name, monkeypatch):
    cls = CONTRASTIVE_LOSSES[name]
    loss_fn = cls() if name in ("clip", "cyclip") else cls(num_samples=10)
    I, T, ti, tt = (x.requires_grad_() for x in _features(0))
    with checks.checking(False), _NoHostSync(monkeypatch):
        out = _call(name, loss_fn, I, T, torch.arange(5), ti, tt)
        out["loss"].backward()
    if name not in ("clip", "cyclip"):  # the same call with the checks on does read ids on the host
        with checks.checking(True), _NoHostSync(monkeypatch), pytest.raises(AssertionError, match="read on the host"):
            _call(name, loss_fn, I, T, torch.arange(5), ti, tt)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_no_cuda_sync_on_the_hot_path(name):
    cls = CONTRASTIVE_LOSSES[name]
    loss_fn = (cls() if name in ("clip", "cyclip") else cls(num_samples=10)).cuda()
    I, T, ti, tt = (x.cuda().requires_grad_() for x in _features(0))
    ids = torch.arange(5, device="cuda")
    _call(name, loss_fn, I, T, ids, ti, tt)["loss"].backward()  # warm-up (lazy CUDA initialisation)
    torch.cuda.synchronize()
    with checks.checking(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            _call(name, loss_fn, I, T, ids, ti, tt)["loss"].backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_small_tau_are_computed_in_float32(dtype):
    """fp16 / bf16 features (what autocast hands the loss) with tau 0.005: the loss is float32 and equals the
    float64 loops on the same rounded features; the features' gradients come back in their dtype and
    equal the loops' gradients."""
    I, T, _, _ = _features(1)
    I, T = I.to(dtype).requires_grad_(), T.to(dtype).requires_grad_()
    tau = torch.full((5,), 0.005, requires_grad=True)
    out = RobustGCLoss(num_samples=5)(I, T, torch.arange(5), torch.arange(5), tau, tau)
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and I.grad.dtype == T.grad.dtype == dtype
    assert tau.grad.dtype == torch.float32
    I64, T64 = I.detach().double().requires_grad_(), T.detach().double().requires_grad_()
    r_con, r_temp, _ = ref.moving_average_step(I64, T64, list(range(5)), list(range(5)), [0.005] * 5, [0.005] * 5,
                                               {"image": {}, "text": {}}, 0.8, 7.0)
    r_con.backward()
    assert out["contrastive"].item() == pytest.approx(r_con.item(), rel=1e-4, abs=1e-6)
    assert out["temperature"].item() == pytest.approx(r_temp, rel=1e-4, abs=1e-6)
    for got, want in ((I.grad, I64.grad), (T.grad, T64.grad)):  # to the gradient's own rounding
        assert torch.allclose(got.double(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_floor_is_below_the_smallest_normal(dtype):
    """The floor that keeps CPU exp off its slow underflow path moves a term by less than 3.2e-38."""
    from tempnet.losses.contrastive import _exp_off_diagonal

    x = torch.linspace(-400.0, 0.0, 36, dtype=torch.float64).reshape(6, 6).to(dtype)  # exact in dtype
    expected = torch.exp(x.double())
    expected.diagonal().zero_()
    got = _exp_off_diagonal(x.clone()).double()
    assert torch.allclose(got, expected, rtol=1e-6, atol=3.2e-38) and (got.diagonal() == 0).all()
    assert (got > 0).sum() == 30  # floored, not flushed to zero: the row sums keep every term
