"""The two batch samplers through their public interface: GlobalBatchSampler (CLIP: epochs, drop-last) and
StepBatchSampler (LLM: a stream of steps over seeded per-epoch permutations). The global batch is the same
for any split into ranks and accumulation steps, resuming skips batches, and every epoch is a new
permutation. The epoch tests read only "which indices, in which order, per epoch" (the helpers below)."""

import pytest

from helpers import order_agreement
from tempnet.data.lm import StepBatchSampler
from tempnet.data.sampler import GlobalBatchSampler


def global_sampler_epochs(n, batch, world, epochs, seed=7) -> list[list[int]]:
    """GlobalBatchSampler: per epoch, the indices of its global batches in order (ranks concatenated)."""
    return [sum(_global_batches(world, batch, epoch=e, n=n, seed=seed), []) for e in range(epochs)]


def step_sampler_epochs(n, micro, accum, world, steps, seed=3) -> list[list[int]]:
    """StepBatchSampler: the global stream of `steps` steps (per step rank 0's micro-batches, then rank 1's...)
    cut into epochs of n positions (the last one may be partial)."""
    per_rank = [list(StepBatchSampler(n, micro, accum, world, r, seed=seed, start_step=0, max_steps=steps))
                for r in range(world)]
    stream = [i for step in range(steps) for r in range(world)
              for batch in per_rank[r][step * accum:(step + 1) * accum] for i in batch]
    assert len(stream) == steps * micro * accum * world
    return [stream[k:k + n] for k in range(0, len(stream), n)]


def _global_batches(world, batch, epoch=0, start=0, n=50, seed=7):
    samplers = [GlobalBatchSampler(n, batch, world, r, seed=seed) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch, start)
    per_rank = [list(s) for s in samplers]
    return [sum((per_rank[r][k] for r in range(world)), []) for k in range(len(per_rank[0]))]


def test_global_batch_independent_of_world_size():
    one = _global_batches(1, 12)
    assert one == _global_batches(2, 6) == _global_batches(4, 3)
    assert len(one) == 50 // 12 and all(len(b) == 12 for b in one)
    flat = sum(one, [])
    assert len(set(flat)) == len(flat)  # no index twice within an epoch


def test_epochs_differ_and_resume_skips():
    assert _global_batches(2, 6, epoch=0) != _global_batches(2, 6, epoch=1)
    assert _global_batches(2, 6, epoch=1, start=2) == _global_batches(2, 6, epoch=1)[2:]
    assert GlobalBatchSampler(50, 6, 2, 0).steps_per_epoch == 4


def test_sampler_errors():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(10, 8, 2, 0)
    with pytest.raises(ValueError, match="bad sampler arguments"):
        GlobalBatchSampler(10, 2, 2, 2)
    with pytest.raises(ValueError, match="start_step"):
        GlobalBatchSampler(10, 2).set_epoch(0, 6)


def test_global_sampler_second_epoch_is_a_new_permutation():
    """Two epochs on 2 ranks: each epoch holds 4 x 12 distinct indices, and the second is not the first's order."""
    first, second = global_sampler_epochs(50, 6, 2, epochs=2)
    for epoch in (first, second):
        assert len(epoch) == len(set(epoch)) == 48 and set(epoch) <= set(range(50))
    assert order_agreement(first, second) < 0.2, (first, second)
    assert global_sampler_epochs(50, 6, 2, epochs=2) == global_sampler_epochs(50, 12, 1, epochs=2)


def test_step_sampler_epochs_are_new_permutations():
    """7 steps of 8 (2 ranks x accumulation 2 x micro 2) over 23 examples: two whole epochs and a part; each
    whole epoch is a permutation of all 23, the second differs from the first, the part has no repeat."""
    epochs = step_sampler_epochs(23, 2, 2, 2, steps=7)
    assert [len(e) for e in epochs] == [23, 23, 10]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(23)) and len(set(epochs[2])) == 10
    assert order_agreement(epochs[0], epochs[1]) < 0.2, epochs


@pytest.mark.parametrize("world,accum", [(2, 2), (4, 1)])
def test_step_sampler_global_batch_independent_of_ranks_and_accumulation(world, accum):
    """World 2 x accumulation 2 (and 4 x 1) reads the same global batch per step as 1 x accumulation 4."""
    assert step_sampler_epochs(23, 2, accum, world, steps=7) == step_sampler_epochs(23, 2, 4, 1, steps=7)
