"""Per-sample state at scale (tempnet.losses.sample_state): host storage, bytes per sample, the gamma schedule."""

import math

import pytest
import torch
import torch.nn.functional as F

from tempnet.losses import ISogCLRLoss, RobustGCLoss, SogCLRLoss
from tempnet.losses.sample_state import cosine_gamma, set_gamma, state_bytes_per_sample


def _batch(n=8, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return image, F.normalize(image + torch.randn(n, d, generator=g), dim=1)


def test_bytes_per_sample():
    assert state_bytes_per_sample(RobustGCLoss(10)) == 18 == state_bytes_per_sample(SogCLRLoss(10))
    assert state_bytes_per_sample(ISogCLRLoss(10)) == 34


def test_host_state_stays_on_the_host_and_round_trips():
    loss = ISogCLRLoss(20, state_on_host=True).to(torch.float64)  # a move of the module leaves the state alone
    assert all(b.dtype in (torch.float32, torch.bool) for b in loss.buffers())
    plain = ISogCLRLoss(20).to(torch.float64)
    assert plain.image_state.s.dtype == torch.float64
    image, text = _batch()
    ids = torch.arange(3, 11)
    ref = ISogCLRLoss(20)
    for _ in range(2):
        out, expected = loss(image, text, ids, ids), ref(image, text, ids, ids)
        assert torch.equal(out["loss"], expected["loss"])
    restored = ISogCLRLoss(20, state_on_host=True)
    restored.load_state_dict(loss.state_dict())
    for (k, a), b in zip(restored.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.gpu
def test_host_state_on_cuda_equals_device_state():
    image, text = (x.cuda() for x in _batch(16))
    ids = torch.randint(1000, (16,)).cuda()
    host, device = RobustGCLoss(1000, state_on_host=True).cuda(), RobustGCLoss(1000).cuda()
    assert host.image_state.s.device.type == "cpu" and host.image_state.s.is_pinned()
    tau = torch.full((16,), 0.02, device="cuda")
    for _ in range(3):
        a, b = host(image, text, ids, ids, tau, tau), device(image, text, ids, ids, tau, tau)
        assert torch.allclose(a["loss"], b["loss"])
    assert torch.allclose(host.image_state.s, device.image_state.s.cpu())


def test_cosine_gamma_schedule_and_set_gamma():
    assert cosine_gamma(0.2, 0, 10) == 1.0 and cosine_gamma(0.2, 10, 10) == 0.2 == cosine_gamma(0.2, 15, 10)
    assert cosine_gamma(0.2, 5, 10) == pytest.approx(0.6)
    assert cosine_gamma(0.2, 3, 10) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 0.3)) / 2)
    values = [cosine_gamma(0.2, e, 10) for e in range(11)]
    assert values == sorted(values, reverse=True)
    loss = RobustGCLoss(10, gamma=0.8)
    set_gamma(loss, 0.5)
    assert loss.image_state.gamma == loss.text_state.gamma == 0.5
    with pytest.raises(ValueError):
        set_gamma(loss, 0.0)
