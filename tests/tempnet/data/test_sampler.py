"""GlobalBatchSampler: the global batch is the same for any number of ranks; resuming skips batches."""

import pytest

from tempnet.data.sampler import GlobalBatchSampler


def _global_batches(world, batch, epoch=0, start=0, n=50):
    samplers = [GlobalBatchSampler(n, batch, world, r, seed=7) for r in range(world)]
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
