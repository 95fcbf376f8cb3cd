"""Bimodal-CL on webdataset shards (data.format=webdataset, configs/debug.yaml's tiny model, CPU): a run
interrupted mid-epoch and resumed, with another number of loader workers, equals the uninterrupted run;
a changed shard list is refused on resume; the CC12M launch script runs."""

import json
import re

import pytest
import torch

from bimodal_runs import checkpoint, metrics, run_main, tensors
from shard_data import write_pair_shards
from tempnet.data.shards import build_index, write_index
from tempnet.errors import UserError, user_message

pytestmark = pytest.mark.slow

RUN = ["data.format=webdataset", "data.synthetic=false", "train.epochs=2", "eval.every_epoch=false",
       "train.tensorboard=false", "train.progress_bar=false", "loss=isogclr_tempnet", "loss_args.gamma_schedule=cosine"]


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


TINY = ["model.image.source=timm", "model.image.name=vit_tiny_patch16_224", "model.image.pretrained=false",
        "model.image.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, global_pool: avg}",
        "model.text.source=hf", "model.text.name=distilbert", "model.text.pretrained=false",
        "model.text.tokenizer=open_clip", "model.text.max_length=16",
        "model.text.config_overrides={dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 64, vocab_size: 49408, "
        "max_position_embeddings: 32}",
        "model.embed_dim=16", "model.image_size=32", "data.num_workers=0", "train.epochs=1", "train.batch_size=16",
        "train.precision=fp32", "train.progress_bar=false", "train.tensorboard=false", "train.log_every=1",
        "tempnet.num_prototypes=8",
        "loss_args.rho=2.0", "eval.batch_size=64", "eval.num_workers=0", "eval.zeroshot=[]"]


def test_cc12m_launch_script(shards, tmp_path):
    """Bimodal-CL/scripts/cc12m_vitb32_isogclr_tempnet.sh as a user runs it (NPROC, OUT, DATA = the shard folder),
    its config's sizes shrunk, on the first 2 shards: it trains on them and writes the evaluation and checkpoint."""
    import os
    import sys

    from helpers import free_port, run

    root, _, _ = shards
    pairs = root / "pairs"
    retrieval = f"eval.retrieval=[{{name: synthetic, json: {pairs / 'retrieval.json'}, image_root: {pairs}}}]"
    out = tmp_path / "run"
    env = {"PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
           "MASTER_PORT": str(free_port()), "NPROC": "1", "OUT": str(out), "DATA": str(root / "shards"),
           "LAST_SHARD": "00001"}
    run(["bash", "Bimodal-CL/scripts/cc12m_vitb32_isogclr_tempnet.sh", *TINY, retrieval,
         "eval.select_best=synthetic/r_mean"], env=env)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]  # 80 pairs of 2 shards, global batch 16
    index = json.loads((out / "shard_index.json").read_text())
    assert [s["url"].rsplit("/", 1)[1] for s in index["shardlist"]] == ["00000.tar", "00001.tar"]
    assert json.loads((out / "eval.json").read_text())["epoch"] == 1 and (out / "checkpoint-best").is_dir()
    _, state = checkpoint(out, 5)
    assert state["criterion"]["image_state.s"].shape == (80,) and state["shard_list_hash"] == index["shard_list_hash"]


def test_resampled_run_resumes_its_step_count(shards, tmp_path):
    _, pattern, _ = shards
    data = [f"data.train_shards={pattern}", "train.epochs=1", "data.num_workers=0", "data.resampled=true",
            "data.shuffle_buffer=16"]
    out = tmp_path / "stream"
    run_main(out, *RUN, *data, "train.stop_after_steps=2")
    run_main(out, *RUN, *data, resume=True)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]  # 160 samples, global batch 32: a nominal epoch
    _, state = checkpoint(out, 5)
    seen = state["criterion"]["image_state.seen"]
    assert seen.shape == (160,) and 32 <= int(seen.sum()) < 160  # drawn with replacement: not every sample


def test_a_corrupt_sample_fails_in_one_line_naming_shard_and_key(tmp_path):
    pattern, _ = write_pair_shards(tmp_path / "data", num=64, per_shard=32, corrupt=("000010004",))
    with pytest.raises(UserError) as err:  # raised in a loader worker: the CLI prints user_message's one line
        run_main(tmp_path / "run", *RUN, f"data.train_shards={pattern}", "data.num_workers=2", "data.shard_window=0")
    assert re.fullmatch(r"shard \S+00001\.tar, key '000010004': cannot decode[^\n]*", user_message(err.value))
