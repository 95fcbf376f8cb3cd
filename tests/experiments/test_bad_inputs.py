"""Every bad input of the entry points (the trainers, the `tempnet` command, scripts/eval_lm.py) is one line
`error: ...` naming the field, file, record or value, exit status 2, no traceback; a run directory that
existed is left as it was.

The command lines run in one subprocess (tests/experiments/entry_points.py runs each as `python SCRIPT ...`
would, paying the imports once), and so do the refused resumes of a finished run and the two skip runs whose
resume is compared; the finished run and that resume (from what the other process left) are the trainers'
main(argv) in the pytest process, checked by what they wrote; what only a real process shows (DataLoader workers
and torchrun: one test) runs as its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from entry_points import run_cases
from helpers import OFFLINE_ENV, REPO, torchrun
from tempnet.train.checkpoint import RUN_FILES

pytestmark = pytest.mark.slow


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(code: int, stderr: str) -> str:
    assert code == 2, f"exit {code}:\n{stderr[-4000:]}"
    assert "Traceback" not in stderr, stderr[-4000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-4000:]
    return errors[0]


# ---- the data a user brings, and bad versions of it -----------------------------------------------

@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    from tempnet.train.lm_debug import synthetic_documents, train_tokenizer

    root = tmp_path_factory.mktemp("lm_inputs")
    docs = synthetic_documents(120, seed=3)
    train_tokenizer("gpt2", docs, 384, root / "tokenizer")
    (root / "corpus.txt").write_text("\n".join(docs) + "\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.txt").write_bytes(b"some text\n\x00\x01\x02\x03 more")
    (root / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (root / "blank.txt").write_text("   \n\n\t \n")
    (root / "short.txt").write_text("just twenty bytes!!\n")
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "no end\n')
    (root / "number.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    (root / "null.jsonl").write_text('{"text": "fine"}\n{"text": null}\n')
    (root / "instructions.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 8))
    return root


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from PIL import Image

    from tempnet.data.synthetic_image_text import make_synthetic_image_text

    root = make_synthetic_image_text(tmp_path_factory.mktemp("clip_inputs"), num_train=64, num_retrieval=4,
                                     zeroshot_per_class=1, image_size=32)
    entries = json.loads((root / "train.json").read_text())
    (root / "not_json.json").write_text('[{"image": "train/00000.png", "caption": "a red')

    def variant(name, index, **change):
        changed = [dict(e) for e in entries]
        changed[index].update(change)
        for key in [k for k, v in change.items() if v is ...]:
            del changed[index][key]
        (root / name).write_text(json.dumps(changed))

    variant("caption_number.json", 3, caption=7)
    variant("caption_missing.json", 4, caption=...)
    variant("caption_empty.json", 5, caption=" ?! ")
    variant("missing_image.json", 6, image="train/gone.png")
    Image.effect_noise((32, 32), 60).convert("RGB").save(root / "broken.jpg", quality=95)
    (root / "broken.jpg").write_bytes((root / "broken.jpg").read_bytes()[:600])  # truncated: opens, fails to load
    variant("corrupt_image.json", 9, image="broken.jpg")
    _clip_benchmark_inputs(root)
    return root


def _clip_benchmark_inputs(root: Path) -> None:
    """A Bimodal-CL checkpoint of the debug model, and task lists of scripts/eval_clip_benchmark.py whose data
    folder is empty or whose dataset name is misspelt."""
    import torch

    from tempnet.config import load_config, save_config
    from tempnet.train import checkpoint as ckpt
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import build_model

    cfg = load_config(BimodalConfig, REPO / "Bimodal-CL" / "configs" / "debug.yaml", ["data.synthetic=false"])
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, torch.device("cpu"))
    checkpoint = root / "clip_run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    ckpt.save_weights(model.state_dict(), checkpoint / "model.safetensors")
    save_config(cfg, checkpoint / "config.yaml")
    (root / "no_data").mkdir()
    for name, dataset in (("folder", "folder"), ("cifar10", "cifar10"), ("flickr30k", "flickr30k"),
                          ("misspelt", "cifar1O")):
        (root / f"tasks_{name}.yaml").write_text(json.dumps([{"dataset": dataset, "root": str(root / "no_data")}]))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A TempNet GPT-2 checkpoint (vocabulary 300), the same model without TempNet, and an exported TempNet
    of a 200-token vocabulary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tempnet.integrations.export import export_tempnet
    from tempnet.integrations.hf import tempnet_model_from_config

    root = tmp_path_factory.mktemp("checkpoints")
    config = dict(n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    tempnet_model_from_config(GPT2Config(vocab_size=300, **config), objective="tempnet_dro", hidden_size=8,
                              rho=2.0).save_pretrained(root / "tempnet")
    GPT2LMHeadModel(GPT2Config(vocab_size=300, **config)).save_pretrained(root / "plain")
    other = tempnet_model_from_config(GPT2Config(vocab_size=200, **config), objective="tempnet_dro", hidden_size=8,
                                      rho=2.0)
    export_tempnet(other, root / "other_vocab.safetensors")
    trainer_checkpoint = root / "run" / "checkpoint-2"  # what a trainer writes: the state --resume reads
    trainer_checkpoint.mkdir(parents=True)
    (trainer_checkpoint / "model.safetensors").write_bytes((root / "tempnet" / "model.safetensors").read_bytes())
    (trainer_checkpoint / "trainer_state.json").write_text('{"step": 2}')
    os.mkfifo(root / "fifo")
    (root / "target.safetensors").write_bytes(b"keep me")
    (root / "link.safetensors").symlink_to(root / "target.safetensors")
    (root / "a_file").write_text("not a directory")
    from transformers import ViTConfig, ViTModel  # a model that is not a causal LM

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=8, patch_size=4)).save_pretrained(root / "not_causal")
    return root


def _gpt2(out, data_file, tokenizer, *extra):
    return ["GPT_2/train.py", ["--config", "GPT_2/configs/debug.yaml", "--output-dir", str(out), "data.synthetic=false",
                               f"data.files=[{data_file}]", f"model.tokenizer={tokenizer}", "train.max_steps=2",
                               "train.save_every=2", "train.progress_bar=false", "train.tensorboard=false", *extra]]


def _clip(out, train_json, image_root, *extra):
    return ["Bimodal-CL/train.py", ["--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", str(out),
                                    "data.synthetic=false", f"data.train_json={train_json}",
                                    f"data.image_root={image_root}", "train.epochs=1", "train.progress_bar=false",
                                    "train.tensorboard=false", *extra]]


def _cases(lm: Path, clip: Path, ck: Path, out: Path) -> dict:
    """name -> ([target, argv], what the error line must contain)."""
    tok, good = lm / "tokenizer", lm / "corpus.txt"

    def gpt2(name, data_file=good, *extra, tokenizer=tok):
        return _gpt2(out / name, data_file, tokenizer, *extra)

    def clip_run(name, ann, *extra):
        return _clip(out / name, clip / ann, clip, *extra)

    def cli(*argv):
        return ["tempnet.cli", [str(a) for a in argv]]

    def eval_lm(pretrained, tasks="piqa"):
        return ["scripts/eval_lm.py", ["run", "--model", "tempnet", "--model_args", f"pretrained={pretrained}",
                                       "--tasks", tasks, "--limit", "1"]]

    def clip_benchmark(tasks):
        return ["scripts/eval_clip_benchmark.py", ["--checkpoint", str(clip / "clip_run" / "checkpoint-3"), "--tasks",
                                                   str(clip / f"tasks_{tasks}.yaml"), "--output", str(out / tasks),
                                                   "--num-workers", "0"]]

    plain, other, export = ck / "plain", ck / "other_vocab.safetensors", ck / "tempnet"
    trainer_ck = ck / "run" / "checkpoint-2"
    not_a_model = f"{trainer_ck} is not a model checkpoint: it has no config.json; a trainer's checkpoint-<step>/"
    return {
        # LLM trainer: data
        "lm_empty_file": (gpt2("a", lm / "empty.txt"), "empty.txt is empty"),
        "lm_binary_file": (gpt2("b", lm / "binary.txt"), "binary.txt is a binary file, not text (a NUL byte at "
                                                         "offset 10)"),
        "lm_not_utf8": (gpt2("c", lm / "latin1.txt"), "latin1.txt is not UTF-8 text (invalid byte at offset 3)"),
        "lm_whitespace_only": (gpt2("d", lm / "blank.txt"), "hold no text (only whitespace)"),
        "lm_twenty_bytes": (gpt2("e", lm / "short.txt"), "fewer than one block of data.seq_len=32"),
        "lm_bad_jsonl_line": (gpt2("f", lm / "broken.jsonl"), f"line 2 of {lm / 'broken.jsonl'} is not valid JSON"),
        "lm_number_text": (gpt2("g", lm / "number.jsonl"), f"line 2 of {lm / 'number.jsonl'}: its 'text' is 5 (int)"),
        "lm_null_text": (gpt2("h", lm / "null.jsonl"), "its 'text' is null (NoneType)"),
        "lm_missing_data": (gpt2("i", lm / "nowhere.txt"), "nowhere.txt"),
        "lm_missing_dataset_dir": (gpt2("j", good, f"data.dataset={lm}/no/such/set"),
                                   "data.dataset: no such file or directory"),
        # LLM trainer: model, tokenizer, config
        "lm_seq_len_above_positions": (gpt2("k", good, "data.seq_len=128"),
                                       "data.seq_len=128 is larger than the model's 64 positions"),
        "lm_bad_yaml_override": (gpt2("l", good, "optim.lr=[1"), "override optim.lr: its value '[1' is not valid YAML"),
        "lm_unknown_base_key": (gpt2("m", good, "model.base.n_layers=1"),
                                "model.base.n_layers is not a parameter of GPT2Config; did you mean model.base.n_layer?"),
        "lm_missing_tokenizer": (gpt2("n", tokenizer=lm / "no_tokenizer"), "model.tokenizer: no such file or directory"),
        "lm_missing_model_path": (gpt2("o", good, "model.mode=finetune", f"model.path={lm}/no_model"),
                                  "model.path: no such file or directory"),
        "lm_missing_relative_model_path": (gpt2("p", good, "model.mode=finetune", "model.path=GPT_2/no_model"),
                                           "model.path: no such file or directory: GPT_2/no_model"),
        # data.synthetic generates model.path: a path the user set must not be replaced without a word
        "lm_synthetic_with_model_path": (["LLaMA-2/train.py", ["--config", "LLaMA-2/configs/debug.yaml", "--output-dir",
                                                               str(out / "l2"), "model.path=MY_MODEL"]],
                                         "data.synthetic=true generates the corpus, tokenizer and base model under "
                                         "OUTPUT_DIR/debug_assets, but model.path=MY_MODEL is set"),
        # LLM trainer: model families
        "lm_not_a_causal_lm": (gpt2("za1", good, "model.mode=finetune", f"model.path={ck / 'not_causal'}"),
                               "model_type 'vit' is not a causal language model"),
        "lm_arch_not_a_causal_lm": (gpt2("za2", good, "model.arch=vit"), "model.arch must be a causal-LM model_type"),
        "lm_base_key_of_another_family": (gpt2("za3", good, "model.arch=qwen2"),
                                          "model.base.n_layer is not a parameter of Qwen2Config"),
        "lm_no_chat_template": (gpt2("za4", lm / "instructions.json", "data.format=alpaca",
                                     "data.prompt_template=tokenizer"), "has no chat template"),
        "lm_rho_and_target_entropy": (gpt2("za5", good, "tempnet.target_entropy=2.0"),
                                      "tempnet.rho=3.0 and tempnet.target_entropy=2.0 are exclusive"),
        "lm_target_entropy_above_log_v": (gpt2("za6", good, "tempnet.rho=null", "tempnet.target_entropy=9.0"),
                                          "tempnet.target_entropy must lie in (0, log V = 5.951]"),
        "lm_renamed_key": (gpt2("zc", good, "optim.tempnet_lr=1e-4"), "config key optim.tempnet_lr was renamed to tempnet.lr"),
        # CLIP trainer
        "clip_renamed_key": (clip_run("zd", "train.json", "train.save_every_steps=5"),
                             "config key train.save_every_steps was renamed to train.save_every"),
        "clip_annotations_not_json": (clip_run("q", "not_json.json"), "cannot parse annotation file"),
        "clip_caption_number": (clip_run("r", "caption_number.json"),
                                f"entry 3 of {clip / 'caption_number.json'} has a caption that is not a string: 7"),
        "clip_caption_missing": (clip_run("s", "caption_missing.json"),
                                 f"entry 4 of {clip / 'caption_missing.json'} has no caption"),
        "clip_caption_empty": (clip_run("t", "caption_empty.json"),
                               f"entry 5 of {clip / 'caption_empty.json'} has an empty caption"),
        "clip_missing_image": (clip_run("u", "missing_image.json"),
                               "1 of 64 image files not found, the first: entry 6 of"),
        "clip_missing_image_root": (_clip(out / "v", clip / "train.json", clip / "no_root"),
                                    "data.image_root: no such directory"),
        "clip_prototypes_above_batch": (clip_run("w", "train.json", "tempnet.num_prototypes=64"),
                                        "tempnet.num_prototypes=64 is larger than the global batch of 32 pairs"),
        "clip_unknown_timm_kwarg": (clip_run("x", "train.json", "model.image.kwargs.dpth=2"),
                                    "model.image.kwargs.dpth is not a parameter of timm's VisionTransformer; did you "
                                    "mean model.image.kwargs.depth?"),
        "clip_unknown_text_override": (clip_run("y", "train.json", "model.text.config_overrides.n_layer=1"),
                                       "did you mean model.text.config_overrides.n_layers?"),
        "clip_missing_text_tower": (clip_run("z", "train.json", "model.text.pretrained=true", "model.text.name=./no/bert"),
                                    "model.text.name: no such file or directory"),
        "clip_corrupt_image": (clip_run("za", "corrupt_image.json", "data.num_workers=0"),
                               "cannot read the image file of entry 9 of"),
        "clip_on_bad_sample_value": (clip_run("zb", "train.json", "data.on_bad_sample=ignore"),
                                     "data.on_bad_sample must be 'error' or 'skip'"),
        # the tempnet command
        "generate_tempnet_other_vocab": (cli("generate", plain, "--tokenizer", tok, "--prompt", "hi", "--tempnet", other),
                                         "was built for vocabulary size 200 but"),
        "generate_tempnet_not_an_export": (cli("generate", plain, "--prompt", "hi", "--tempnet", ck / "a_file"),
                                           "a_file is not a TempNet export"),
        "attach_other_vocab": (cli("attach", plain, other, out / "attached"), "was built for vocabulary size 200 but"),
        "export_without_tempnet": (cli("export", plain, out / "t.safetensors"), "holds no TempNet weights"),
        "export_unwritable": (cli("export", export, ck / "a_file" / "t.safetensors"), "cannot write"),
        "export_to_symlink": (cli("export", export, ck / "link.safetensors"), "link.safetensors is a symbolic link"),
        "export_to_fifo": (cli("export", export, ck / "fifo"), "fifo is a special file"),
        "export_to_directory": (cli("export", export, ck), "is a directory"),
        "export_missing_checkpoint": (cli("export", ck / "no" / "ckpt", out / "u.safetensors"),
                                      "checkpoint: no such file or directory"),
        # a trainer's checkpoint-<step>/ (no config.json): every command that loads a model says so in one line
        "generate_trainer_checkpoint": (cli("generate", trainer_ck, "--prompt", "hi"), f"model {not_a_model}"),
        "export_trainer_checkpoint": (cli("export", trainer_ck, out / "c.safetensors"), f"checkpoint {not_a_model}"),
        "attach_trainer_checkpoint": (cli("attach", trainer_ck, other, out / "attached2"), f"base {not_a_model}"),
        "eval_trainer_checkpoint": (eval_lm(trainer_ck), f"pretrained {not_a_model}"),
        # scripts/eval_clip_benchmark.py: a data folder without the data, a misspelt dataset name
        "clip_benchmark_empty_folder": (clip_benchmark("folder"), "task 'folder': Couldn't find any class folder in"),
        "clip_benchmark_no_cifar10": (clip_benchmark("cifar10"), "task 'cifar10': cannot load cifar10 from"),
        "clip_benchmark_no_flickr30k": (clip_benchmark("flickr30k"), "task 'flickr30k': flickr30k in"),
        "clip_benchmark_misspelt": (clip_benchmark("misspelt"), "dataset 'cifar1O' is neither folder, retrieval_json "
                                                                "nor one of CLIP_benchmark's; did you mean cifar10?"),
        "generate_not_a_causal_lm": (cli("generate", ck / "not_causal", "--prompt", "hi"),
                                     "model_type 'vit' is not a causal language model"),
        # scripts/eval_lm.py
        "eval_unknown_task": (eval_lm(export, "no_such_task_xyz"), "--tasks: Tasks not found: no_such_task_xyz"),
        "eval_missing_path": (eval_lm("runs/missing/final"), "pretrained: no such file or directory: runs/missing/final"),
        "eval_plain_checkpoint": (eval_lm(plain), "holds no TempNet weights"),
    }


@pytest.fixture(scope="module")
def lm_run(lm_files, tmp_path_factory):
    """A finished two-step LLM run on the user's files: (its [target, argv], its hashes), for the resumes that
    must be refused without touching it. It runs through GPT_2/train.py's main(argv) in this process (the same
    run directory as `python GPT_2/train.py ARGV` writes, without an interpreter's start-up): what is checked is
    the refused resumes, which run as commands in `results`."""
    from lm_runs import run_here

    out = tmp_path_factory.mktemp("lm_run") / "run"
    target, argv = _gpt2(out, lm_files / "corpus.txt", lm_files / "tokenizer")
    run_here(target, argv)
    return (target, argv), _hashes(out)


#: A bad override or base key on --resume of lm_run (name -> (extra override, what the error line names)).
RESUME_CASES = {"resume_bad_override": ("optim.lr=[1", "override optim.lr"),
                "resume_bad_base_key": ("model.base.n_layers=1", "model.base.n_layers")}
#: data.on_bad_sample=skip past the corrupt image (test_skip_resumes_exactly; its resume is its own process).
SKIP = ("data.on_bad_sample=skip", "data.max_bad_fraction=0.05", "train.log_every=1", "train.epochs=2")


def _skip_run(clip: Path, out: Path, *extra) -> list:
    target, argv = _clip(out, clip / "corrupt_image.json", clip, *SKIP)
    return [target, [*argv, *extra]]


@pytest.fixture(scope="module")
def results(lm_files, clip_files, checkpoints, lm_run, tmp_path_factory):
    """Every command of _cases, the refused resumes of lm_run and the two skip runs (uninterrupted, stopped after
    step 1) in one entry_points.py interpreter: (cases, {name: {code, stderr}}, out, lm_run's hashes after)."""
    out = tmp_path_factory.mktemp("runs")
    cases = _cases(lm_files, clip_files, checkpoints, out)
    (target, argv), _ = lm_run
    commands = {"skip_whole": _skip_run(clip_files, out / "skip_whole"),  # first: trains in a fresh interpreter
                "skip_cut": _skip_run(clip_files, out / "skip_cut", "train.stop_after_steps=1"),
                **{name: command for name, (command, _) in cases.items()},
                **{name: [target, [*argv, extra, "--resume"]] for name, (extra, _) in RESUME_CASES.items()}}
    got = run_cases(commands, out / "cases.json")
    out_dir = Path(argv[argv.index("--output-dir") + 1])
    return cases, got, out, _hashes(out_dir)


#: Found only when the sample is read, after the run has started (and written its config).
FOUND_WHEN_READ = ("clip_corrupt_image",)
CASE_NAMES = list(_cases(Path("l"), Path("c"), Path("k"), Path("o")))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_error_line_naming_it(results, name):
    cases, got, out, _ = results
    line = _one_error_line(got[name]["code"], got[name]["stderr"])
    assert cases[name][1] in line, line
    argv = cases[name][0][1]
    if "--output-dir" in argv and name not in FOUND_WHEN_READ:  # checked before the run starts: nothing written
        run_dir = Path(argv[argv.index("--output-dir") + 1])
        started = [p.name for p in run_dir.glob("*") if p.name in RUN_FILES or p.name.startswith("checkpoint")]
        assert not started, f"a refused run left run files behind (a rerun would be refused): {started}"
    if "--output" in argv:  # eval_clip_benchmark.py writes its results only when every task ran
        assert not Path(argv[argv.index("--output") + 1]).exists()


def test_export_leaves_what_it_refused_alone(results, checkpoints):
    assert (checkpoints / "target.safetensors").read_bytes() == b"keep me"
    assert (checkpoints / "link.safetensors").is_symlink() and (checkpoints / "fifo").is_fifo()


def test_a_bad_override_or_base_key_on_resume_leaves_the_run_directory_alone(results, lm_run):
    _, got, _, after = results
    _, before = lm_run
    for name, (_, expected) in RESUME_CASES.items():
        assert expected in _one_error_line(got[name]["code"], got[name]["stderr"])
    assert after == before


def test_a_bad_image_on_one_rank_of_two_read_in_a_loader_worker_prints_the_line_and_fails(clip_files, tmp_path):
    """Only the rank whose batch holds the corrupt entry fails, with our line (and exit 2); the other rank's next
    collective loses its peer (torch prints that rank's traceback), torchrun stops it, adds its own
    ChildFailedError report and exits 1. Which rank that report names as the root cause is whichever exited
    first (the rank with our error or its peer), so only torchrun's status and our one line are checked.
    The image is read in a DataLoader worker (2 per rank; without workers it is results' clip_corrupt_image): the
    worker's "Original Traceback" that torch re-raises with is not printed, and the line names the file and why."""
    target, argv = _clip(tmp_path / "run", clip_files / "corrupt_image.json", clip_files, "train.batch_size=16",
                         "data.num_workers=2")
    proc = subprocess.run([*torchrun(2), target, *argv], cwd=REPO, env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "ChildFailedError" in proc.stderr, proc.stderr[-4000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "cannot read the image file of entry 9 of" in ours[0], proc.stderr[-4000:]
    line = ours[0]
    assert "broken.jpg" in line and "truncated" in line.lower() and "DataLoader worker" not in line, line
    assert "Original Traceback" not in proc.stderr, proc.stderr[-4000:]


def test_skip_resumes_exactly(results, clip_files):
    """skip trains past the corrupt image and counts it; the replacement is a rule of the index alone, so a run
    stopped after step 1 and resumed logs the losses of the uninterrupted run (bad_samples counts what this
    process has found, so it restarts at a resume; the fraction limit is tests/tempnet/data/test_bad_samples.py's).
    The uninterrupted and the stopped run are results' (entry_points.py); the resume is another process's: this
    one's, through Bimodal-CL/train.py's main(argv) (lm_runs.run_here, compared by its numbers)."""
    from helpers import read_jsonl
    from lm_runs import run_here

    _, got, out, _ = results
    for name in ("skip_whole", "skip_cut"):
        assert got[name]["code"] == 0, got[name]["stderr"][-4000:]
    target, argv = _skip_run(clip_files, out / "skip_cut")
    assert target == "Bimodal-CL/train.py"
    run_here(target, [*argv, "--resume"])
    whole, cut = read_jsonl(out / "skip_whole" / "metrics.jsonl"), read_jsonl(out / "skip_cut" / "metrics.jsonl")
    assert [r["step"] for r in whole] == [r["step"] for r in cut] == [1, 2, 3, 4]
    assert [r["loss"] for r in whole] == [r["loss"] for r in cut]
    assert whole[-1]["bad_samples"] == 1
