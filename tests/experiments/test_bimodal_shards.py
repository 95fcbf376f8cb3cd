"""Bimodal-CL on webdataset shards (data.format=webdataset, configs/debug.yaml's tiny model, CPU): a run
interrupted mid-epoch and resumed, with another number of loader workers, equals the uninterrupted run;
a changed shard list is refused on resume; the CC12M launch script runs."""

import json

import pytest
import torch

from bimodal_runs import checkpoint, metrics, run_main, tensors
from shard_data import write_pair_shards
from tempnet.data.shards import build_index, write_index
from tempnet.errors import UserError

pytestmark = pytest.mark.slow

RUN = ["data.format=webdataset", "train.epochs=2", "eval.every_epoch=false", "train.tensorboard=false",
       "train.progress_bar=false", "loss=isogclr_tempnet", "loss_args.gamma_schedule=cosine"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pattern, _ = write_pair_shards(root, num=160, per_shard=40)
    index = write_index(build_index(pattern), root / "index.json")
    return root, pattern, index


def test_resume_mid_epoch_equals_the_uninterrupted_run(shards, tmp_path):
    _, pattern, index = shards
    data = [f"data.train_shards={pattern}", f"data.train_index={index}", "data.shard_window=2"]
    ref = tmp_path / "ref"
    run_main(ref, *RUN, *data, "data.num_workers=0")
    out = tmp_path / "crashed"
    run_main(out, *RUN, *data, "data.num_workers=2", "train.stop_after_steps=3")  # step 3 of 5 in epoch 1
    assert (out / "checkpoint-3" / "COMPLETE").is_file()
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["shard_list_hash"] == \
        json.loads(index.read_text())["shard_list_hash"]
    run_main(out, *RUN, *data, "data.num_workers=0", resume=True)

    strip = lambda rows: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]  # noqa: E731
    assert [r["step"] for r in metrics(ref)] == list(range(1, 11))
    assert strip(metrics(out)) == strip(metrics(ref))
    (model_a, state_a), (model_b, state_b) = checkpoint(out, 10), checkpoint(ref, 10)
    a, b = tensors({"model": model_a, **state_a}), tensors({"model": model_b, **state_b})
    assert a.keys() == b.keys() and "criterion.image_state.s" in a
    assert bool(a["criterion.image_state.seen"].all())  # one slot per sample: the dense ids fill the state
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming"


def test_a_changed_shard_list_is_refused_on_resume(shards, tmp_path):
    root, pattern, _ = shards
    out = tmp_path / "run"
    data = [f"data.train_shards={pattern}", "data.num_workers=0"]  # indexed at start into OUT/shard_index.json
    run_main(out, *RUN, *data, "train.stop_after_steps=2")
    shard = root / "shards" / "00003.tar"
    backup = shard.read_bytes()
    try:
        shard.write_bytes(backup[:len(backup) // 2])  # a shard rewritten (truncated): another sample list
        (out / "shard_index.json").unlink()
        with pytest.raises(UserError, match="shard_list_hash"):
            run_main(out, *RUN, *data, resume=True)
    finally:
        shard.write_bytes(backup)
