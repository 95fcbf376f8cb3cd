"""Bimodal-CL on webdataset shards (data.format=webdataset, configs/debug.yaml's tiny model, CPU): a run
interrupted mid-epoch and resumed from a copy of its shards in another folder, with another number of loader
workers, equals the uninterrupted run; a shard rewritten in place is refused on resume and the run directory
is left as it was; the CC12M launch script's run under torchrun x 2, resumed mid-epoch from a copy, equals
itself uninterrupted; broken shard files and a data.train_index that is not an index are one `error:` line
(scripts/index_shards.py as a subprocess, train.py as one where no sample decodes; elsewhere their CLI wrappers
in-process); a resume keeps host-memory per-sample state off the
device; the CC12M launch script runs."""

import gzip
import io
import json
import re
import shutil
import tarfile

import pytest
import torch

from bimodal_runs import TRAIN, argv, checkpoint, metrics, run_main, tensors
from fault_runs import cli_error_line, error_line, hashes, python_run
from helpers import REPO, load_module
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


def test_resume_mid_epoch_from_a_moved_copy_equals_the_uninterrupted_run(shards, tmp_path):
    root, pattern, index = shards
    data = [f"data.train_index={index}", "data.shard_window=2"]
    ref = tmp_path / "ref"
    run_main(ref, *RUN, f"data.train_shards={pattern}", *data, "data.num_workers=0")
    out = tmp_path / "crashed"
    run_main(out, *RUN, f"data.train_shards={pattern}", *data, "data.num_workers=2",
             "train.stop_after_steps=3")  # step 3 of 5 in epoch 1
    assert (out / "checkpoint-3" / "COMPLETE").is_file()
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["shard_list_hash"] == \
        json.loads(index.read_text())["shard_list_hash"]
    scratch = tmp_path / "scratch"  # the same shards staged to another folder (a per-job copy)
    shutil.copytree(root / "shards", scratch)
    run_main(out, *RUN, f"data.train_shards={scratch}/{{00000..00003}}.tar", *data, "data.num_workers=0", resume=True)

    strip = lambda rows: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]  # noqa: E731
    assert [r["step"] for r in metrics(ref)] == list(range(1, 11))
    assert strip(metrics(out)) == strip(metrics(ref))
    (model_a, state_a), (model_b, state_b) = checkpoint(out, 10), checkpoint(ref, 10)
    a, b = tensors({"model": model_a, **state_a}), tensors({"model": model_b, **state_b})
    assert a.keys() == b.keys() and "criterion.image_state.s" in a
    assert bool(a["criterion.image_state.seen"].all())  # one slot per sample: the dense ids fill the state
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming"


def _rewrite_with_other_images(shard):
    """The shard downloaded again: the same keys in the same order, other image bytes (rotated by one)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    images = [data for m, data in members if m.name.endswith(".png")]
    images = images[1:] + images[:1]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for m, data in members:
            data = images.pop(0) if m.name.endswith(".png") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())


def test_a_rewritten_shard_is_refused_on_resume_and_nothing_is_written(shards, tmp_path, capsys):
    """The refusal through train.py's CLI wrapper in-process (exit 2, one `error:` line; train.py's own process
    ends in one line in test_a_resampled_stream_where_nothing_decodes_stops_in_one_line)."""
    from tempnet.train.cli import run_trainer

    from bimodal_runs import train_module

    root, _, _ = shards
    own = tmp_path / "shards"
    shutil.copytree(root / "shards", own)
    out = tmp_path / "run"
    args = [*RUN, f"data.train_shards={own}/{{00000..00003}}.tar", "data.num_workers=0"]  # indexed at start
    run_main(out, *args, "train.stop_after_steps=2")
    index = json.loads((out / "shard_index.json").read_text())
    _rewrite_with_other_images(own / "00003.tar")
    again = build_index(str(own / "00003.tar"))["shardlist"][0]
    assert all(again[k] == index["shardlist"][3][k] for k in ("nsamples", "first_key", "last_key"))
    before = hashes(out)
    line = cli_error_line(lambda a: run_trainer(train_module().main, a), argv(out, *args, resume=True), capsys)
    assert "was trained on other data: its shard_list_hash" in line
    assert hashes(out) == before  # shard_index.json included: a refused resume changes no file


def _broken_shards(folder, kind: str) -> str:
    """A pattern of two shards, the second broken: cut inside a tar header, empty, or gzip-compressed."""
    pattern, _ = write_pair_shards(folder, num=64, per_shard=32)
    shard = folder / "shards" / "00001.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        header = tar.getmembers()[4].offset
    shard.write_bytes({"truncated": data[:header + 100], "empty": b"", "gzip": gzip.compress(data)}[kind])
    return pattern


BROKEN = {"truncated": r"is not a readable tar \(truncated or damaged\)", "empty": r"is empty \(0 bytes\)",
          "gzip": r"is gzip-compressed"}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_shard_is_one_line_in_the_trainer_and_the_index_script(kind, tmp_path, capsys):
    """scripts/index_shards.py as a user runs it (a subprocess) on a truncated shard; on the others its CLI
    wrapper in-process (the message is what differs). train.py's CLI wrapper in-process on every kind (train.py's
    own process ends in one `error:` line in test_a_resampled_stream_where_nothing_decodes_stops_in_one_line)."""
    from tempnet.train.cli import run_trainer

    from bimodal_runs import train_module

    pattern = _broken_shards(tmp_path / "data", kind)
    expected = rf"error: shard \S+00001\.tar {BROKEN[kind]}"
    index_args = [pattern, "--output", tmp_path / "index.json"]
    train_args = argv(tmp_path / "run", *RUN, f"data.train_shards={pattern}")
    if kind == "truncated":
        line = error_line(python_run(REPO / "scripts" / "index_shards.py", *index_args, expect=2))
    else:
        line = cli_error_line(load_module("index_shards", REPO / "scripts" / "index_shards.py").cli, index_args, capsys)
    assert re.match(expected, line) and not (tmp_path / "index.json").exists()
    line = cli_error_line(lambda a: run_trainer(train_module().main, a), train_args, capsys)
    assert re.match(expected, line)


@pytest.mark.parametrize("what", ["albef_json", "tar"])
def test_a_train_index_that_is_not_an_index_is_one_line(what, shards, tmp_path):
    root, _, _ = shards
    path = {"albef_json": root / "pairs" / "train.json", "tar": root / "shards" / "00000.tar"}[what]
    with pytest.raises(UserError) as err:  # in-process: the CLI prints user_message's one line (exit 2, as above)
        run_main(tmp_path / "run", *RUN, f"data.train_index={path}")
    assert user_message(err.value) == f"{path} is not a shard index of scripts/index_shards.py (an index is its " \
                                      "JSON output; the shards themselves go in data.train_shards)"


def test_a_resampled_stream_where_nothing_decodes_stops_in_one_line(tmp_path):
    pattern, keys = write_pair_shards(tmp_path / "data", num=64, per_shard=32, corrupt=True)
    proc = python_run(TRAIN, *argv(tmp_path / "run", *RUN, f"data.train_shards={pattern}", "data.resampled=true",
                                   "data.on_bad_sample=skip", "data.max_bad_fraction=1.0", "data.num_workers=2",
                                   "data.shuffle_buffer=8"), expect=2)
    assert re.fullmatch(r"error: none of the 64 samples can be decoded; the last: shard \S+, key '\d+': cannot "
                        r"decode its \.png image.*", error_line(proc))


def test_a_resume_keeps_host_state_off_the_device(tmp_path, monkeypatch):
    """loss_args.state_on_host: the checkpoint's per-sample state goes from the file into the host buffers, never
    through the run's device. The device here is `meta` (standing in for a GPU: a tensor put there has no data,
    so a state that passed through it could not be copied back)."""
    from tempnet.config import config_to_dict
    from tempnet.train import checkpoint as ckpt
    from tempnet.train import protocol
    from tempnet.train.cli import build_parser, parse
    from tempnet.train.clip_config import RESUME_SAFE, BimodalConfig
    from tempnet.train.clip_trainer import ClipRun

    out = tmp_path / "run"
    host = ["loss=isogclr_tempnet", "loss_args.state_on_host=true", "data.num_workers=0", "train.tensorboard=false",
            "train.progress_bar=false", "eval.every_epoch=false"]
    run_main(out, *host, "train.stop_after_steps=2")
    _, cfg = parse(argv(out, *host, resume=True), BimodalConfig, build_parser("Bimodal-CL"))
    run = ClipRun(cfg, out, torch.device("meta"))
    assert {b.device.type for b in run.criterion.buffers() if b.numel() == run.data.num_samples} == {"cpu"}
    load_weights = ckpt.load_weights  # safetensors cannot load onto meta: the weights come via the host
    monkeypatch.setattr(ckpt, "load_weights", lambda file, dev: {k: v.to(dev) for k, v in load_weights(file).items()})
    run.load(protocol.resume_point(out, config_to_dict(run.cfg), RESUME_SAFE))
    stored = torch.load(out / "checkpoint-2" / "optimizer.pt", weights_only=True)["criterion"]
    state = run.criterion.state_dict()
    per_sample = [k for k, v in stored.items() if v.dim() == 1 and len(v) == run.data.num_samples]
    assert per_sample and all(state[k].device.type == "cpu" and torch.equal(state[k], stored[k]) for k in per_sample)


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


def _cc12m(shards, out, *extra):
    """Bimodal-CL/scripts/cc12m_vitb32_isogclr_tempnet.sh as a user runs it (NPROC=2, OUT, DATA = the shard
    folder), its config's sizes shrunk (a global batch of 16: 8 per rank), on the first 2 shards, a checkpoint
    every 2 steps, all kept."""
    import os
    import sys

    from helpers import free_port, run

    root, _, _ = shards
    pairs = root / "pairs"
    retrieval = f"eval.retrieval=[{{name: synthetic, json: {pairs / 'retrieval.json'}, image_root: {pairs}}}]"
    env = {"PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
           "MASTER_PORT": str(free_port()), "NPROC": "2", "OUT": str(out), "DATA": str(root / "shards"),
           "LAST_SHARD": "00001"}
    run(["bash", "Bimodal-CL/scripts/cc12m_vitb32_isogclr_tempnet.sh", *TINY, "train.batch_size=8", retrieval,
         "eval.select_best=synthetic/r_mean", "train.save_every=2", "train.keep_last=0", *extra], env=env)


@pytest.fixture(scope="module")
def cc12m(shards, tmp_path_factory):
    """The launch script's uninterrupted 2-rank run (test_cc12m_launch_script's, and the reference of
    test_a_two_rank_resume_mid_epoch_reads_the_same_samples)."""
    out = tmp_path_factory.mktemp("cc12m") / "run"
    _cc12m(shards, out)
    return out


def test_cc12m_launch_script(cc12m):
    """The CC12M launch script trains on the 2 shards under torchrun x 2 and writes the evaluation and
    checkpoint."""
    out = cc12m
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]  # 80 pairs of 2 shards, global batch 16
    index = json.loads((out / "shard_index.json").read_text())
    assert [s["url"].rsplit("/", 1)[1] for s in index["shardlist"]] == ["00000.tar", "00001.tar"]
    assert json.loads((out / "eval.json").read_text())["epoch"] == 1 and (out / "checkpoint-best").is_dir()
    _, state = checkpoint(out, 5)
    assert state["criterion"]["image_state.s"].shape == (80,) and state["shard_list_hash"] == index["shard_list_hash"]
    assert state["world_size"] == 2


def test_a_two_rank_resume_mid_epoch_reads_the_same_samples(shards, cc12m, tmp_path):
    """torchrun x 2 (the launch script's run), resumed from its checkpoint at step 2 of 5: every later step equals
    the uninterrupted run's (each rank reads its slice of the same global batch; a wrong position shows in the
    losses and the per-sample state). Two launches, not three: the uninterrupted run also saves checkpoint-2
    (train.save_every=2, the same save as train.stop_after_steps=2's), and a copy of it without its later
    checkpoints is the directory a run stopped at step 2 leaves (the trainer rewinds metrics.jsonl, the
    evaluations and the best checkpoint past the checkpoint)."""
    assert sorted(p.name for p in cc12m.glob("checkpoint-[0-9]*")) == [f"checkpoint-{s}" for s in (2, 4, 5)]
    out = tmp_path / "run"
    shutil.copytree(cc12m, out, symlinks=True)
    for later in ("checkpoint-4", "checkpoint-5"):
        shutil.rmtree(out / later)
    _cc12m(shards, out, "--resume")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]  # noqa: E731
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]
    assert strip(metrics(out)) == strip(metrics(cc12m))
    a, b = checkpoint(out, 5)[1]["criterion"], checkpoint(cc12m, 5)[1]["criterion"]
    assert all(torch.equal(a[k], b[k]) for k in a)


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
