"""The only place library code touches torch.distributed: rank/world size and gathers.

Every function is the identity (or (1, 0)) when no process group is initialised, so the losses
have one code path for one process and for many.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

__all__ = ["world_size_and_rank", "node_layout", "is_main_process", "gather_with_grad", "gather_ids",
           "all_reduce_mean", "all_reduce_min", "all_reduce_max", "max_over_ranks", "broadcast_object", "barrier",
           "main_process_first", "init_from_env", "destroy"]


def world_size_and_rank() -> tuple[int, int]:
    """(world size, rank), or (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def node_layout() -> dict:
    """{"nnodes", "nproc_per_node"} of this run, for its records: processes per node from the launcher's
    LOCAL_WORLD_SIZE (torchrun, accelerate) or LOCAL_SIZE (the deepspeed launcher), nodes = world size / that.
    One node of all processes when neither is set (a plain `python train.py`)."""
    world, _ = world_size_and_rank()
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world)
    local = min(max(local, 1), world)
    return {"nnodes": world // local, "nproc_per_node": local}


def is_main_process() -> bool:
    return world_size_and_rank()[1] == 0


def _all_gather(x: torch.Tensor, same_shape: bool) -> list[torch.Tensor]:
    world, _ = world_size_and_rank()
    if not same_shape:  # one extra collective, only to turn a mismatch into a clear error
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        if len({int(s) for s in sizes}) != 1:
            raise ValueError(f"every rank must pass the same batch size to a gathered loss, got "
                             f"{[int(s) for s in sizes]} (use drop_last=True in the data loader)")
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the gradient of its own slice.

    The losses compute the same global-batch loss on every rank, so each rank's gradient of the
    gathered tensor is already complete: no reduction is needed, and the gradient reaching a rank's
    local features equals a single process's gradient on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, same_shape: bool) -> torch.Tensor:
        _, rank = world_size_and_rank()
        ctx.rank, ctx.size = rank, x.shape[0]
        return torch.cat(_all_gather(x, same_shape), dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size], None


def gather_with_grad(x: torch.Tensor, same_shape: bool = True) -> torch.Tensor:
    """Concatenate every rank's x [B, ...] into [W * B, ...] in rank order, keeping the local gradient.

    same_shape=True (the losses' hot path; our samplers give every rank the same batch size) trusts
    that every rank passes the same shape and issues one collective. same_shape=False first
    all-gathers the batch sizes and raises a ValueError naming them when they differ.
    """
    if world_size_and_rank()[0] == 1:
        return x
    return _GatherWithGrad.apply(x, same_shape)


def gather_ids(ids: torch.Tensor, same_shape: bool = True) -> torch.Tensor:
    """Concatenate every rank's dataset indices [B] into [W * B] in rank order (no gradient).

    same_shape as in gather_with_grad.
    """
    if world_size_and_rank()[0] == 1:
        return ids
    return torch.cat(_all_gather(ids, same_shape), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over ranks (for logging global-batch metrics); a copy, x is untouched."""
    world, _ = world_size_and_rank()
    if world == 1:
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    y = x.detach().clone()
    if world_size_and_rank()[0] > 1:
        dist.all_reduce(y, op=op)
    return y


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """The minimum of x over ranks (e.g. the global tau_min); a copy, x is untouched."""
    return _all_reduce(x, dist.ReduceOp.MIN)


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """The maximum of x over ranks (e.g. the global tau_max); a copy, x is untouched."""
    return _all_reduce(x, dist.ReduceOp.MAX)


_CPU_GROUP: list = []


def _cpu_group():
    if not _CPU_GROUP:  # the first call is collective: every rank reaches it at the same point
        _CPU_GROUP.append(None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo"))
    return _CPU_GROUP[0]


def max_over_ranks(value: int) -> int:
    """The largest of every rank's integer, through a CPU (gloo) group: no GPU stream synchronisation, so
    the trainers can agree on a flag (a signal, a failed write) at every step for one tiny collective."""
    if world_size_and_rank()[0] == 1:
        return int(value)
    x = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=_cpu_group())
    return int(x)


def broadcast_object(obj=None):
    """Rank 0's picklable `obj` on every rank (through the CPU group); `obj` itself in one process."""
    if world_size_and_rank()[0] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_cpu_group())
    return box[0]


def barrier() -> None:
    """Wait for every rank; a no-op in one process."""
    if world_size_and_rank()[0] > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Run the body on rank 0 first, then on the other ranks (e.g. tokenise and cache once, then read).

    Same contract as accelerate's `main_process_first`, for runs that are not launched by accelerate.
    """
    is_main = is_main_process()
    if not is_main:
        barrier()
    try:
        yield
    finally:
        if is_main:
            barrier()


def init_from_env(backend: str | None = None, require_group: bool = False) -> tuple[int, int, int]:
    """Initialise the default process group from torchrun's variables if they are set.

    With require_group=True a run not started by a launcher still gets a group of one process
    (DeepSpeed needs one). Returns (world size, rank, local rank). Picks nccl when CUDA is
    available, else gloo.
    """
    launched = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if (launched or require_group) and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")):
            dist.init_process_group(backend)
        else:
            import socket

            with socket.socket() as s:  # a free port for a group of one
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    world, rank = world_size_and_rank()
    return world, rank, int(os.environ.get("LOCAL_RANK", 0))


def destroy() -> None:
    """Tear down the process group (a gloo run can abort at exit without it)."""
    _CPU_GROUP.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
