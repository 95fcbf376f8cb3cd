"""webdataset shards (tempnet.data.shards, shard_stream, scripts/index_shards.py) on tiny img2dataset-style
tars written with webdataset's own TarWriter: 200 pairs in 5 shards, sparse keys, one corrupt image."""

import json
import shutil
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import REPO, load_module
from shard_data import write_pair_shards
from tempnet.data.image_text import pre_caption
from tempnet.data.image_transforms import train_transform
from tempnet.data.shard_stream import ResampledShardStream
from tempnet.data.shards import (ShardedPairs, ShardIndex, ShardWindowSampler, build_index, check_same_content,
                                  read_index, write_index)
from tempnet.errors import UserError
from tempnet.losses import SogCLRLoss
from tempnet.train.clip_data import TokenizingCollate

CORRUPT = "000010003"  # shard 1, the 4th key


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pattern, keys = write_pair_shards(root, num=200, per_shard=48, corrupt=(CORRUPT,))
    captions = [pre_caption(e["caption"]) for e in json.loads((root / "pairs" / "train.json").read_text())]
    return root, pattern, keys, captions, build_index(pattern)


def test_index_lists_counts_key_ranges_and_ids_match_keys(shards):
    _, pattern, keys, captions, index = shards
    assert [s["nsamples"] for s in index["shardlist"]] == [48, 48, 48, 48, 8] and index["num_samples"] == 200
    assert index["shardlist"][1]["first_key"] == "000010000" and index["shardlist"][0]["last_key"] == keys[47]
    dense, by_key = ShardIndex(index, "index"), ShardIndex(index, "key")
    assert dense.num_samples == 200 and by_key.num_samples == int(keys[-1]) + 1  # sparse keys: a larger state
    data = ShardedPairs(dense, train_transform(32), on_bad_sample="skip")
    for position in (0, 6, 47, 48, 150, 199):  # 6: the key after the first gap (000000007)
        image, caption, image_id, text_id = data[position]
        assert image.shape == (3, 32, 32) and caption == captions[position]
        assert image_id == text_id == position  # the dense id: the sample's place in the index
        shard, offset = dense.locate(position)
        assert by_key.sample_id(shard, offset, keys[position]) == int(keys[position])


def test_corrupt_sample_names_shard_and_key_or_is_replaced_deterministically(shards):
    _, _, keys, captions, index = shards
    bad = keys.index(CORRUPT)
    with pytest.raises(UserError, match=rf"shard .*00001\.tar, key '{CORRUPT}': cannot decode"):
        ShardedPairs(ShardIndex(index), train_transform(32))[bad]
    skip = ShardedPairs(ShardIndex(index), train_transform(32), on_bad_sample="skip")
    first, again = skip[bad], skip[bad]
    assert first[1] == again[1] == captions[bad + 1] and first[2] == bad + 1 and torch.equal(first[0], again[0])
    strict = ShardedPairs(ShardIndex(index), train_transform(32), on_bad_sample="skip", max_bad_fraction=0.0)
    with pytest.raises(UserError, match="max_bad_fraction"):
        strict[bad]


def test_an_id_outside_the_state_names_shard_and_key(shards):
    _, _, _, _, index = shards
    with pytest.raises(UserError, match=r"00002\.tar, key '000099999'.*per-sample state \[0, 200\)"):
        ShardIndex(index).sample_id(2, 60, "000099999")  # offset past the shard: it changed since indexing
    with pytest.raises(UserError, match=r"key 'abc'"):
        ShardIndex(index, "key").sample_id(0, 0, "abc")


def _epoch_ids(index, epoch, world=2, workers=2, start_step=0):
    """Per rank, the id batches of one epoch through real DataLoaders with `workers` processes."""
    data = ShardedPairs(ShardIndex(index), train_transform(32, augment=False), on_bad_sample="skip")
    data.set_epoch(epoch)
    out = []
    for rank in range(world):
        sampler = ShardWindowSampler(ShardIndex(index).counts, 16 // world, world, rank, seed=3, window=2)
        sampler.set_epoch(epoch, start_step)
        loader = DataLoader(data, batch_sampler=sampler, num_workers=workers,
                            collate_fn=TokenizingCollate(lambda c: (torch.zeros(len(c), 2), torch.ones(len(c), 2))))
        out.append([b[2].tolist() for b in loader])
    return out


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers_and_epochs_differ(shards):
    _, _, keys, _, index = shards
    epoch0, epoch1 = _epoch_ids(index, 0), _epoch_ids(index, 1)
    corrupt = keys.index(CORRUPT)
    for epoch, ranks in enumerate((epoch0, epoch1)):
        assert len(ranks[0]) == len(ranks[1]) == 200 // 16
        sampler = ShardWindowSampler(ShardIndex(index).counts, 16, seed=3, window=2)
        sampler.set_epoch(epoch)
        positions = [p for batch in sampler for p in batch]
        assert len(positions) == len(set(positions)) == 192  # 12 global batches of 16 distinct positions
        seen = [i for rank in ranks for batch in rank for i in batch]
        # each position's own id, except the corrupt one: replaced by its successor's
        assert sorted(seen) == sorted(p + (p == corrupt) for p in positions)
    assert epoch0 != epoch1
    # the global batch is that of one process (ranks take contiguous slices), and a resumed epoch its tail
    single = _epoch_ids(index, 0, world=1, workers=0)[0]
    assert [a + b for a, b in zip(*epoch0)] == single
    assert _epoch_ids(index, 0, world=1, workers=0, start_step=5)[0] == single[5:]
    # a 2-rank run resumed mid-epoch at step 5: each rank goes on with its own slice of global batch 5
    assert [a + b for a, b in zip(*_epoch_ids(index, 0, start_step=5))] == single[5:]


def test_window_sampler_reads_few_shards_per_stretch(shards):
    _, _, _, _, index = shards
    dense = ShardIndex(index)
    sampler = ShardWindowSampler(dense.counts, 8, seed=0, window=2)
    shards_of = [{dense.locate(p)[0] for p in batch} for batch in sampler]
    assert all(len(s) <= 4 for s in shards_of)  # at most two windows of 2 shards meet in one batch
    full = ShardWindowSampler(dense.counts, 8, seed=0, window=0)
    assert max(len({dense.locate(p)[0] for p in b}) for b in full) > 2  # one window: the full permutation


def test_index_script_and_a_changed_shard_list(shards, tmp_path):
    root, pattern, _, _, index = shards
    script = load_module("index_shards", REPO / "scripts" / "index_shards.py")
    out = tmp_path / "index.json"
    script.main([pattern, "--output", str(out)])
    assert read_index(out) == index
    fewer = build_index(pattern.replace("00004", "00003"))
    assert fewer["shard_list_hash"] != index["shard_list_hash"]
    edited = {**index, "shardlist": index["shardlist"][:-1]}
    write_index(edited, tmp_path / "edited.json")
    with pytest.raises(UserError, match="does not match its hash"):
        read_index(tmp_path / "edited.json")
    with pytest.raises(SystemExit) as exc:
        script.cli([str(root / "missing-{0..1}.tar"), "--output", str(out)])
    assert exc.value.code == 2


def _keep_captions(items):
    images, captions, image_ids, _ = zip(*items)
    return torch.stack(images), list(captions), torch.tensor(image_ids)


def test_resampled_stream_ids_match_captions_and_late_samples_start_their_averages(shards):
    _, _, keys, captions, index = shards
    dense = ShardIndex(index)
    stream = ResampledShardStream(dense, train_transform(32, augment=False), _keep_captions, batch_size=16,
                                  num_batches=6, seed=1, shuffle_buffer=64, on_bad_sample="skip")
    stream.set_epoch(0)
    batches = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert len(batches) == 6
    ids = [b[2] for b in batches]
    assert all(keys[int(i)] != CORRUPT for b in ids for i in b)  # dropped, not given another's id
    assert all(captions[int(i)] == c for b in batches for c, i in zip(b[1], b[2]))  # each id is its sample's
    stream.set_epoch(0)
    uninterrupted = [b[2] for b in DataLoader(stream, batch_size=None, num_workers=0)]
    stream.set_epoch(0, start_step=3)  # a resume: a fresh draw of the remaining batches, not a replay
    resumed = [b[2] for b in DataLoader(stream, batch_size=None, num_workers=0)]
    assert len(resumed) == 3
    for part in (uninterrupted[:3], uninterrupted[3:]):  # neither a replay nor the uninterrupted run's tail
        assert all(not torch.equal(a, b) for a, b in zip(resumed, part))
    # the first-visit rule: a sample first drawn in step k starts from its own inner sum, whatever came before
    torch.manual_seed(0)
    loss, fresh = SogCLRLoss(dense.num_samples, gamma=0.5, tau=0.1), SogCLRLoss(dense.num_samples, gamma=0.5, tau=0.1)
    feats = [torch.nn.functional.normalize(torch.randn(2, len(b), 8), dim=-1) for b in ids]
    for f, b in zip(feats[:-1], ids[:-1]):
        loss(f[0], f[1], b, b)
    before = loss.image_state.seen.clone()
    late = ~before[ids[-1]]
    assert late.any() and int(before.sum()) == len({int(i) for b in ids[:-1] for i in b})
    loss(feats[-1][0], feats[-1][1], ids[-1], ids[-1])
    fresh(feats[-1][0], feats[-1][1], ids[-1], ids[-1])
    assert torch.equal(loss.image_state.s[ids[-1][late]], fresh.image_state.s[ids[-1][late]])
    assert not torch.equal(loss.image_state.s[ids[-1][~late]], fresh.image_state.s[ids[-1][~late]])


def _member(path, suffix):
    """(data offset, size) of the first member of the tar at `path` whose name ends with `suffix`."""
    with tarfile.open(path) as tar:
        info = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return info.offset_data, info.size


def _patched(path, offset, new: bytes):
    data = bytearray(path.read_bytes())
    data[offset:offset + len(new)] = new
    path.write_bytes(bytes(data))


def test_which_changes_of_a_shard_the_hash_detects(tmp_path):
    pattern, _ = write_pair_shards(tmp_path / "a", num=64, per_shard=32)
    shard = tmp_path / "a" / "shards" / "00001.tar"
    base = build_index(pattern)["shard_list_hash"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "a" / "shards", moved)  # a per-job scratch copy: same content, another folder
    assert build_index(str(moved / "{00000..00001}.tar"))["shard_list_hash"] == base
    assert build_index([str(moved / "00001.tar"), str(moved / "00000.tar")])["shard_list_hash"] != base  # reordered
    original = shard.read_bytes()

    def changed(offset, new: bytes) -> bool:
        _patched(shard, offset, new)
        try:
            return build_index(pattern)["shard_list_hash"] != base
        finally:
            shard.write_bytes(original)

    start, size = _member(shard, "000010003.png")
    middle = start + size // 2
    # another download of the same keys: an image with other bytes of the same size (in the sampled middle)
    assert changed(middle, bytes(b ^ 0xFF for b in original[middle:middle + 8]))
    assert changed(*(lambda s, n: (s, b"x" * n))(*_member(shard, "000010005.txt")))  # a caption, same length
    name = original.index(b"000010004.json")  # a member renamed in its header
    assert changed(name, b"000010004.jsoN")
    # not caught (the documented limit): a same-size change away from every member's sampled 64 bytes
    assert not changed(start + 40, bytes(b ^ 0xFF for b in original[start + 40:start + 48]))
    # a data.train_index checked against the files: the first shard that differs is named
    _patched(shard, middle, bytes(b ^ 0xFF for b in original[middle:middle + 8]))
    with pytest.raises(UserError, match=r"shard \S+a/shards/00001\.tar is not shard 1 of INDEX \(\S+\): its "
                                        r"fingerprint differ"):
        check_same_content(build_index(str(moved / "{00000..00001}.tar")), build_index(pattern), "INDEX")


def test_duplicate_keys_are_an_error_with_key_ids_naming_both_shards(tmp_path):
    pattern, _ = write_pair_shards(tmp_path, num=64, per_shard=32)
    folder = tmp_path / "shards"
    shutil.copy(folder / "00000.tar", folder / "00002.tar")  # the same keys again, in another shard
    index = build_index(str(folder / "{00000..00002}.tar"))
    assert ShardIndex(index, "index").num_samples == 96  # positions: harmless
    with pytest.raises(UserError, match=r"key '000000000' is in shard \S+00000\.tar and in shard \S+00002\.tar"):
        ShardIndex(index, "key")
    assert build_index(pattern)["key_held_twice"] is None  # img2dataset's disjoint ranges: no overlap


def test_bad_samples_are_counted_once_over_epochs_and_workers(shards):
    _, _, keys, _, index = shards
    bad = keys.index(CORRUPT)
    data = ShardedPairs(ShardIndex(index), train_transform(32, augment=False), on_bad_sample="skip")
    collate = TokenizingCollate(lambda c: (torch.zeros(len(c), 2), torch.ones(len(c), 2)))
    for epoch in range(3):  # 1 bad of 200 (0.5%): three epochs stay under the 1% limit
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=50, num_workers=2, collate_fn=collate)
        ids = [i for batch in loader for i in batch[2].tolist()]
        assert ids.count(bad + 1) == 2 and bad not in ids
    data[bad - 1], data[bad]  # noqa: B018  (read in this process too)
    assert data.num_bad() == 1  # one distinct sample, met by two workers in three epochs and by this process


def test_resampled_streams_differ_by_rank_and_hold_max_bad_fraction(shards, tmp_path):
    _, _, _, _, index = shards

    def stream(rank, idx=index, **kw):
        s = ResampledShardStream(ShardIndex(idx), train_transform(32, augment=False), _keep_captions, batch_size=8,
                                 num_batches=4, rank=rank, seed=1, shuffle_buffer=16, on_bad_sample="skip", **kw)
        s.set_epoch(0)
        return [b[2].tolist() for b in DataLoader(s, batch_size=None, num_workers=0)]

    assert stream(0) == stream(0) and stream(0) != stream(1)  # each rank its own draw
    pattern, _ = write_pair_shards(tmp_path, num=96, per_shard=32, corrupt=tuple(f"{10000 + i:09d}" for i in range(
        40)))  # shard 1 undecodable: a third of the data
    third = build_index(pattern)
    with pytest.raises(UserError, match=r"of 96 samples are bad, more than data.max_bad_fraction=0.01"):
        stream(0, third)
    assert len(stream(0, third, max_bad_fraction=0.5)) == 4


def test_a_shard_cut_anywhere_is_refused_naming_it(tmp_path):
    pattern, _ = write_pair_shards(tmp_path, num=64, per_shard=32)
    shard = tmp_path / "shards" / "00001.tar"
    data = shard.read_bytes()
    header, size = _member(shard, "000010005.txt")
    header -= 512
    for cut in (header + 100, header + 512 + size // 2, header):  # in a header, in a member, between members
        shard.write_bytes(data[:cut])
        with pytest.raises(UserError, match=rf"shard \S+00001\.tar is (not a readable tar \(truncated|truncated)"):
            build_index(pattern)
