"""Two real gloo processes: the gathered losses see the global batch, update the state identically on
every rank, and each rank's feature gradient equals a single process's on the concatenated batch."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from helpers import free_port
from tempnet.distributed import all_reduce_mean, gather_ids, gather_with_grad, world_size_and_rank
from tempnet.losses import ClipLoss, CyClipLoss, ISogCLRLoss, RobustGCLoss, SogCLRLoss

WORLD, LOCAL_B, DIM, N, STEPS = 2, 3, 5, 12, 3
IDS = [[0, 1, 2, 3, 4, 5], [6, 7, 2, 3, 8, 0], [9, 10, 11, 1, 5, 6]]  # revisits across steps


def _batch(step):
    g = torch.Generator().manual_seed(step)
    I = F.normalize(torch.randn(WORLD * LOCAL_B, DIM, generator=g), dim=1)
    T = F.normalize(I + torch.randn(WORLD * LOCAL_B, DIM, generator=g), dim=1)
    tau_i = 0.005 + 0.045 * torch.rand(WORLD * LOCAL_B, generator=g)
    tau_t = 0.005 + 0.045 * torch.rand(WORLD * LOCAL_B, generator=g)
    return I, T, torch.tensor(IDS[step]), tau_i, tau_t


def _make_losses():
    return {"clip": ClipLoss(0.05), "cyclip": CyClipLoss(0.05), "sogclr": SogCLRLoss(N, tau=0.03),
            "isogclr": ISogCLRLoss(N, eta=0.001), "robust": RobustGCLoss(N)}


def _run(losses, rank=0, world=1):
    """Per step and loss: (value, grad of this rank's features, grad of this rank's taus); then states."""
    out = []
    sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B) if world > 1 else slice(None)
    for step in range(STEPS):
        I, T, ids, ti, tt = _batch(step)
        for name, fn in losses.items():
            i, t = I[sl].clone().requires_grad_(), T[sl].clone().requires_grad_()
            a, b = ti[sl].clone().requires_grad_(), tt[sl].clone().requires_grad_()
            robust = name == "robust"  # the only loss that takes temperatures
            value = fn(i, t, ids[sl], ids[sl], tau_image=a if robust else None, tau_text=b if robust else None)["loss"]
            value.backward()
            out.append((name, value.detach(), i.grad, t.grad, a.grad, b.grad))
    states = {name: {k: v.clone() for k, v in fn.state_dict().items()} for name, fn in losses.items()}
    return out, states


def _worker(rank, port, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        assert world_size_and_rank() == (WORLD, rank)
        x = torch.full((2,), float(rank), requires_grad=True)
        gathered = gather_with_grad(x)
        (gathered * torch.arange(1.0, 5.0)).sum().backward()
        helpers = {"gathered": gathered.detach(), "grad": x.grad, "ids": gather_ids(torch.tensor([rank, 10 + rank])),
                   "mean": all_reduce_mean(torch.tensor([float(rank)]))}
        # the hot path issues one all-gather per tensor; same_shape=False adds one for the sizes and names a mismatch
        calls, all_gather = [], dist.all_gather
        dist.all_gather = lambda *a, **k: (calls.append(1), all_gather(*a, **k))[1]
        try:
            gather_with_grad(x)
            fast = len(calls)
            gather_ids(torch.tensor([rank]), same_shape=False)
            helpers["gather_calls"] = (fast, len(calls) - fast)
        finally:
            dist.all_gather = all_gather
        try:
            gather_ids(torch.arange(rank + 1), same_shape=False)
        except ValueError as e:
            helpers["mismatch"] = str(e)
        results = _run(_make_losses(), rank, WORLD)
        torch.save({"helpers": helpers, "results": results}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_losses_equal_single_process(tmp_path):
    assert world_size_and_rank() == (1, 0)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single, single_states = _run(_make_losses())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        h = got["helpers"]
        assert h["gathered"].tolist() == [0.0, 0.0, 1.0, 1.0]
        assert h["grad"].tolist() == ([1.0, 2.0] if rank == 0 else [3.0, 4.0])  # own slice, not summed
        assert h["ids"].tolist() == [0, 10, 1, 11] and h["mean"].item() == pytest.approx(0.5)
        assert h["gather_calls"] == (1, 2)
        assert "same batch size" in h["mismatch"] and "[1, 2]" in h["mismatch"]
        results, states = got["results"]
        sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        for (name, value, gi, gt, ga, gb), (sname, svalue, sgi, sgt, sga, sgb) in zip(results, single):
            assert name == sname
            assert value.item() == pytest.approx(svalue.item(), rel=1e-5, abs=1e-6), name
            assert torch.allclose(gi, sgi[sl], rtol=1e-4, atol=1e-6), name
            assert torch.allclose(gt, sgt[sl], rtol=1e-4, atol=1e-6), name
            if name == "robust":
                assert torch.allclose(ga, sga[sl], rtol=1e-4, atol=1e-7)
                assert torch.allclose(gb, sgb[sl], rtol=1e-4, atol=1e-7)
        for name, state in states.items():
            for key, value in state.items():
                assert torch.allclose(value.float(), single_states[name][key].float(), rtol=1e-5, atol=1e-7), (name, key)
