"""Every launch script runs end to end, as a user runs it: `NPROC=.. OUT=.. DATA=.. bash <folder>/scripts/X.sh
key=value ...` with its own launcher (deepspeed, torchrun, accelerate launch), config and data arguments, on
CPU, with tiny local data and overrides that only shrink the model and the step count. Each run must
write its final model (or evaluation) into the fresh OUT, and its per-step loss, ce and tau statistics (CLIP:
and its retrieval numbers) must match its golden curve, tests/assets/losses/<folder>-<script>.json
(scripts/loss_compare.py; regenerate with --update-golden, see the README's Tests section). One script per launcher also runs as two nodes
(two launchers on this machine, NNODES=2) against one process on the same global batch."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_runs import ENV, REPO, free_port, metrics

pytestmark = pytest.mark.slow

# The tiny stand-ins for the paper's models: every size field a script's config sets is overridden.
GPT2_TINY = ["model.base.n_layer=1", "model.base.n_embd=32", "model.base.n_head=2", "model.base.n_positions=32",
             "model.base.vocab_size=384"]
COMMON = ["data.seq_len=16", "data.num_proc=1", "data.num_workers=0", "train.max_steps=2", "train.save_every=1",
          "train.micro_batch_size=1", "train.precision=fp32", "train.progress_bar=false", "train.log_every=1",
          "tempnet.rho=3.0", "tempnet.hidden_size=16", "model.gradient_checkpointing=false"]


def _env(**extra) -> dict:
    """The suite's offline environment, the launchers of this interpreter first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**ENV, "PATH": path, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
            **{k: str(v) for k, v in extra.items()}}


def _bash(script: str, *overrides, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", script, *map(str, overrides)], cwd=REPO, env=_env(**env), capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """What a user brings: a text file, an Alpaca JSON, tokenizers and small pretrained-style checkpoints."""
    from tempnet.data.synthetic_image_text import make_synthetic_image_text
    from tempnet.train.lm_debug import save_base_model, synthetic_documents, synthetic_instructions, train_tokenizer

    root = tmp_path_factory.mktemp("assets")
    docs = synthetic_documents(120, seed=3)
    (root / "corpus.txt").write_text("\n".join(docs) + "\n")
    records = synthetic_instructions(40, seed=3)
    (root / "alpaca.json").write_text(json.dumps(records))
    texts = docs + [f"{r['instruction']} {r['input']} {r['output']}" for r in records]
    llama_base = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 64}
    gpt2_base = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 384}
    for arch, base in (("gpt2", gpt2_base), ("llama", llama_base)):
        train_tokenizer(arch, texts, 384, root / f"tokenizer-{arch}")
        save_base_model(arch, base, root / f"tokenizer-{arch}", 0, root / f"base-{arch}")
    make_synthetic_image_text(root / "pairs", num_train=64)
    return root


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    """data.cache_dir of the one-process runs: the same corpus, tokenizer and seq_len tokenise once (the cache's
    key is all three) and later runs read it. The runs of several processes each keep a fresh one, so under every
    launcher rank 0 builds it while the other ranks wait."""
    return tmp_path_factory.mktemp("token_cache")


def _training_scripts(folder: str) -> list[str]:
    """The training launchers (the eval_* / alpaca_* ones run in test_eval_scripts.py)."""
    return sorted(p.name for p in (REPO / folder / "scripts").glob("*.sh")
                  if not p.name.startswith(("eval_", "alpaca_", "export_")))


GPT2_SCRIPTS = _training_scripts("GPT_2")


@pytest.mark.parametrize("name", GPT2_SCRIPTS)
def test_gpt2_script(name, assets, token_cache, tmp_path, golden):
    out = tmp_path / "run"
    tiny = ([f"model.tokenizer={assets / 'tokenizer-gpt2'}", *GPT2_TINY] if name.startswith(("scratch", "ablation"))
            else [f"model.path={assets / 'base-gpt2'}"])
    nproc = 2 if name == "scratch_tempnet.sh" else 1  # one script per launcher also runs 2 processes
    cache = tmp_path if nproc > 1 else token_cache
    _bash(f"GPT_2/scripts/{name}", *COMMON, *tiny, f"train.global_batch_size={nproc}", f"data.cache_dir={cache}",
          NPROC=nproc, OUT=out, DATA=assets / "corpus.txt")
    assert [r["step"] for r in metrics(out)] == [1, 2]
    golden(f"GPT_2-{Path(name).stem}", out)
    assert (out / "final" / "model.safetensors").is_file() and (out / "checkpoint-2" / "COMPLETE").is_file()
    objective = json.loads((out / "final" / "config.json").read_text())["tempnet"]["objective"]
    expected = name.removeprefix("ablation_").removesuffix(".sh") if name.startswith("ablation") else (
        "ce" if "baseline" in name else "tempnet_dro")
    assert objective == expected


LLAMA_SCRIPTS = [f"{folder}/scripts/{name}" for folder in ("LLaMA-1", "LLaMA-2") for name in _training_scripts(folder)]


@pytest.mark.parametrize("script", LLAMA_SCRIPTS)
def test_llama_script(script, assets, token_cache, tmp_path, golden):
    out = tmp_path / "run"
    chat = "chat" in script
    nproc = 2 if script.endswith(("frozen_7b.sh", "chat_70b.sh")) else 1
    # a config that sets the budget as a target entropy keeps doing so: the same rho 3.0 for V = 384
    budget = ["tempnet.rho=null", f"tempnet.target_entropy={math.log(384) - 3.0}"] if "llama3" in script else []
    _bash(script, *COMMON, *budget, f"model.path={assets / 'base-llama'}", "model.dtype=null",
          f"train.global_batch_size={nproc}", f"data.cache_dir={tmp_path if nproc > 1 else token_cache}",
          *(["data.seq_len=48"] if chat else []),
          NPROC=nproc, OUT=out, DATA=assets / ("alpaca.json" if chat else "corpus.txt"))
    assert [r["step"] for r in metrics(out)] == [1, 2]
    golden(script.replace("/scripts/", "-").removesuffix(".sh"), out)
    assert (out / "final" / "model.safetensors").is_file()
    if "LLaMA-2" in script and script.endswith("chat_7b.sh"):  # then the export step of the same folder
        exported = tmp_path / "tempnet.safetensors"
        _bash("LLaMA-2/scripts/export_tempnet.sh", RUN=out, OUT=exported)
        from tempnet.integrations.export import load_tempnet_file

        head = load_tempnet_file(exported).head
        assert head.tau_max == pytest.approx(1.2)  # the chat config's (released) tau range


CLIP_TINY = ["model.image.name=vit_tiny_patch16_224", "model.image.pretrained=false",
             "model.image.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, global_pool: avg}",
             "model.text.name=distilbert", "model.text.pretrained=false", "model.text.tokenizer=open_clip",
             "model.text.max_length=16",
             "model.text.config_overrides={dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 64, vocab_size: 49408, "
             "max_position_embeddings: 32}",
             "model.embed_dim=16", "model.image_size=32", "data.num_workers=0", "train.epochs=1", "train.batch_size=16",
             "train.precision=fp32", "train.log_every=1", "train.progress_bar=false", "tempnet.num_prototypes=8", "loss_args.rho=2.0",
             "eval.batch_size=64", "eval.num_workers=0"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "Bimodal-CL" / "scripts").glob("cc3m_*.sh")))
def test_clip_script_then_evaluation(name, assets, tmp_path, golden):
    pairs = assets / "pairs"
    retrieval = f"eval.retrieval=[{{name: synthetic, json: {pairs / 'retrieval.json'}, image_root: {pairs}}}]"
    out = tmp_path / "run"
    nproc = 2 if name == "cc3m_isogclr_tempnet.sh" else 1
    _bash(f"Bimodal-CL/scripts/{name}", *CLIP_TINY, retrieval, "eval.select_best=synthetic/r_mean",
          f"train.batch_size={16 // nproc}",
          NPROC=nproc, OUT=out, DATA=pairs / "train.json")
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["epoch"] == 1 and "synthetic/img_r1" in evaluation
    golden(f"Bimodal-CL-{Path(name).stem}", out)
    assert json.loads((out / "best.json").read_text())["epoch"] == 1  # the config's select_best, on our set
    if name != "cc3m_isogclr_tempnet.sh":
        return
    # then the evaluation scripts on its last checkpoint, into the results layout (RESULTS_DIR/clip/ROW/<set>/,
    # the sets named as the paper's) that scripts/make_tables.py merges into one row
    checkpoint = sorted(out.glob("checkpoint-*"))[-1]
    results = tmp_path / "results"
    records = {}
    for part, setting in (("flickr30k", retrieval.replace("name: synthetic", "name: flickr30k")),
                          ("zeroshot", f"eval.zeroshot=[{{name: imagenet, kind: folder, root: {pairs / 'zeroshot'}}}]")):
        _bash(f"Bimodal-CL/scripts/eval_{part}.sh", setting, "eval.num_workers=0", "eval.batch_size=64",
              "train.precision=fp32", CKPT=checkpoint, RESULTS_DIR=results, ROW="isogclr_tempnet")
        record = records[part] = json.loads((results / "clip" / "isogclr_tempnet" / part / "eval.json").read_text())
        assert record["step"] == 4 and record["checkpoint"] == str(checkpoint)
        key = "flickr30k/img_r1" if part == "flickr30k" else "imagenet/zeroshot_top1"
        assert key in record, sorted(record)
    from tempnet.eval.tables import build_tables

    (clip,) = [t for t in build_tables(results) if t.key == "clip"]
    assert [c.header for c in clip.columns] == ["Flickr30K IR@1", "Flickr30K TR@1", "ImageNet top-1"]
    (row,) = clip.rows
    assert row.name == "isogclr_tempnet"
    assert row.cells["flickr30k/img_r1"].value == records["flickr30k"]["flickr30k/img_r1"]
    assert row.cells["flickr30k/txt_r1"].value == records["flickr30k"]["flickr30k/txt_r1"]
    assert row.cells["imagenet/zeroshot_top1"].value == records["zeroshot"]["imagenet/zeroshot_top1"]


# ---- several nodes: two launchers on this machine -------------------------------------------------------------

def _start(script: str, log: Path, *overrides, **env) -> tuple[subprocess.Popen, Path]:
    with log.open("w") as f:
        return subprocess.Popen(["bash", script, *map(str, overrides)], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                text=True, env=_env(**env)), log


def _finish(*started: tuple[subprocess.Popen, Path]) -> None:
    try:
        for proc, _ in started:
            proc.wait(timeout=600)
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in started:
        assert proc.returncode == 0, f"{log.stem}: exit {proc.returncode}\n{log.read_text()[-6000:]}"


def _two_nodes(script: str, logs: Path, *overrides, **env) -> list[tuple[subprocess.Popen, Path]]:
    """`script` started as the two nodes of one run, as on two machines: NNODES=2, NODE_RANK 0 and 1 at once, one
    MASTER_ADDR and MASTER_PORT (node 0's rendezvous); NPROC (per node) and the rest from `env`."""
    port = free_port()
    return [_start(script, logs / f"node{rank}.log", *overrides, NNODES=2, NODE_RANK=rank, MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, **env) for rank in (0, 1)]


def _layout(record: dict) -> tuple:
    return record["nnodes"], record["nproc_per_node"]


def _state(out: Path, step: int) -> dict:
    return json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())


# One launch script per launcher (torchrun, deepspeed, accelerate launch) as 2 nodes x 1 process, against 1 process
# with the same global batch of 2 sequences (2 micro-batches accumulated); every dropout off. The one process is the
# script's trainer with the script's config and arguments, run in this process (its main(argv), engine ddp: one
# process, no launcher, no wrapper), so each launcher's two-node run is compared with the plain computation; its
# resolved config must be the two-node run's but for the engine.
MULTINODE = {"torchrun": "LLaMA-2/scripts/frozen_7b.sh", "deepspeed": "GPT_2/scripts/scratch_tempnet.sh",
             "accelerate": "LLaMA-1/scripts/finetune_7b.sh"}
NO_DROPOUT = ["tempnet.dropout=0.0", "model.base.resid_pdrop=0.0", "model.base.embd_pdrop=0.0",
              "model.base.attn_pdrop=0.0"]


def _script_trainer(script: str) -> tuple[str, list[str]]:
    """(the train.py folder, its arguments before the user's) of a launch script: --config and the fixed
    key=value lines of its exec block (data.dataset comes from DATA and is passed by the caller)."""
    text = (REPO / script).read_text()
    folder = re.search(r"^\s*(\S+)/train\.py \\$", text, re.M).group(1)
    config = re.search(r"^\s*--config (\S+) \\$", text, re.M).group(1)
    fixed = re.findall(r"^\s*([a-z_][\w.]*=[\w.-]+) \\$", text, re.M)
    return folder, ["--config", str(REPO / config), *fixed]


def _one_process(script: str, out: Path, data: Path, *overrides: str) -> None:
    """`script`'s run as one plain process: its train.py's main(argv) here, engine ddp."""
    from lm_runs import main_in_process

    folder, fixed = _script_trainer(script)
    main_in_process(folder, [*fixed, "--output-dir", out, f"data.dataset={data}", *overrides, "engine.name=ddp"])


def _config(out: Path) -> dict:
    """The run's resolved config but its engine and its stop_after_steps."""
    config = yaml.safe_load((out / "config.yaml").read_text())
    config.pop("engine")
    config["train"].pop("stop_after_steps")
    return config


@pytest.mark.parametrize("launcher", sorted(MULTINODE))
def test_two_nodes_match_one_process(launcher, assets, tmp_path):
    from lm_runs import max_difference

    script = MULTINODE[launcher]
    model = ([f"model.tokenizer={assets / 'tokenizer-gpt2'}", *GPT2_TINY, *NO_DROPOUT] if "GPT_2" in script
             else [f"model.path={assets / 'base-llama'}", "model.dtype=null", "tempnet.dropout=0.0"])
    args = [*COMMON, *model, "train.global_batch_size=2", "train.max_steps=3", f"data.cache_dir={tmp_path}"]
    data = {"DATA": assets / "corpus.txt", "NPROC": 1}
    one, two = tmp_path / "one", tmp_path / "two"
    stop = ["train.stop_after_steps=2"] if launcher == "torchrun" else []
    nodes = _two_nodes(script, tmp_path, *args, *stop, OUT=two, **data)
    try:
        _one_process(script, one, data["DATA"], *args)
    finally:
        _finish(*nodes)
    assert _config(one) == _config(two)  # the same run but for the engine
    assert _state(two, 2)["world_size"] == 2 and _layout(_state(two, 2)) == (2, 1) and _layout(_state(one, 2)) == (1, 1)
    assert [_layout(r) for r in metrics(two)] == [(2, 1)] * (3 - len(stop))
    if launcher == "torchrun":  # the same world size in another layout resumes (another one: test_multinode.py)
        _bash(script, *args, "--resume", OUT=two, DATA=data["DATA"], NPROC=2)
        assert _layout(_state(two, 3)) == (1, 2) and [_layout(r) for r in metrics(two)] == [(2, 1), (2, 1), (1, 2)]
    a, b = metrics(one), metrics(two)  # float32 sums in another order: 1e-5 (grad_norm: relative)
    for key, scale in (("loss", 1.0), ("ce", 1.0), ("tau_mean", 1.0), ("grad_norm", max(r["grad_norm"] for r in a))):
        assert max_difference(a, b, key) <= 1e-5 * scale, (key, [r[key] for r in a], [r[key] for r in b])
