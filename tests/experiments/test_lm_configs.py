"""Every shipped LLM config and launch script (GPT_2, LLaMA-1, LLaMA-2) loads, validates and points at
files that exist; runs in a few seconds (nothing is trained)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lm_runs import FOLDERS, REPO
from tempnet.train.lm_config import LMTrainConfig

YAMLS = [p for f in FOLDERS for p in sorted((REPO / f / "configs").glob("*.yaml")) if not p.name.startswith("accelerate")]
JSONS = [p for f in FOLDERS for p in sorted((REPO / f / "configs").glob("*.json"))]
SCRIPTS = [p for f in FOLDERS for p in sorted((REPO / f / "scripts").glob("*.sh"))
           if not p.name.startswith(("eval_", "alpaca_"))]  # the evaluation launchers: test_eval_scripts.py
LAUNCHERS = ("torchrun", "deepspeed", "accelerate launch", "tempnet export")
REPO_PATH = re.compile(r"(?:GPT_2|LLaMA-1|LLaMA-2)/[\w./-]+")


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def test_every_folder_ships_the_contract_files():
    for folder in FOLDERS:
        for name in ("train.py", "configs/debug.yaml", "README.md"):
            assert (REPO / folder / name).is_file(), f"{folder}/{name}"
    assert len(YAMLS) >= 8 and len(JSONS) >= 4 and len(SCRIPTS) >= 16


@pytest.mark.parametrize("path", YAMLS, ids=_rel)
def test_yaml_config_loads_and_validates(path):
    from tempnet.config import load_config
    from tempnet.train.engines import fill_deepspeed_config

    folder = path.parent.parent.name
    cfg = load_config(LMTrainConfig, path)
    cfg.check_runnable()
    if path.stem.startswith("debug"):
        assert cfg.data.synthetic and cfg.train.precision == "fp32" and cfg.tempnet.dropout == 0.0
        assert all(v == 0.0 for k, v in cfg.model.base.items() if "drop" in k)  # every dropout 0
        import math

        assert cfg.tempnet.rho < math.log(cfg.data.synthetic_vocab_size)  # the KL ball binds (rho < log V)
    if cfg.engine.deepspeed_config:
        assert (REPO / cfg.engine.deepspeed_config).is_file()
        filled = fill_deepspeed_config(REPO / cfg.engine.deepspeed_config, cfg, 1,
                                       cfg.train.global_batch_size // cfg.train.micro_batch_size)
        assert filled["train_batch_size"] == cfg.train.global_batch_size


@pytest.mark.parametrize("path", JSONS, ids=_rel)
def test_deepspeed_json_is_complete(path):
    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)
    assert "optimizer" not in ds and "scheduler" not in ds  # the trainer passes torch AdamW and its schedule
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key  # one source of truth: the YAML
    if ds["zero_optimization"]["stage"] == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # final/ needs it


def test_accelerate_fsdp_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    import transformers

    path = REPO / "LLaMA-1/configs/accelerate_fsdp.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == DistributedType.FSDP and cfg.fsdp_config["fsdp_version"] == 2
    layer = cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert hasattr(transformers.models.llama.modeling_llama, layer)


def _launcher_args(launcher: str, nproc: str) -> str:
    """What scripts/nodes.sh's `launcher_args LAUNCHER NPROC` gives on one node (the defaults)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    shown = subprocess.run(["bash", "-c", f'source scripts/nodes.sh && launcher_args {launcher} {nproc} && '
                            'echo "${LAUNCHER_ARGS[@]}"'], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return shown.stdout.strip()


def _script_command(path: Path) -> tuple[str, list[str]]:
    """The launcher line and its arguments, with ${VAR:-default} replaced by the default and the node flags of
    scripts/nodes.sh expanded as on one node."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "set -euo pipefail", path
    lines = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line).replace('"', "") for line in lines[1:]]
    launcher = [line.split() for line in lines if line.startswith("launcher_args ")]
    lines = [line for line in lines if not line.startswith(("source scripts/nodes.sh", "launcher_args "))]
    body = " ".join(line.rstrip("\\").strip() for line in lines).removeprefix("exec ")
    if launcher:
        body = body.replace("${LAUNCHER_ARGS[@]}", _launcher_args(*launcher[0][1:]))
    return body, body.split()


@pytest.mark.parametrize("path", SCRIPTS, ids=_rel)
def test_launch_script(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n# Paper (Qiu et al., ICML 2024)"), "a header naming the paper row"
    body, args = _script_command(path)
    assert sum(body.startswith(l) or f" {l} " in f" {body} " for l in LAUNCHERS) == 1, "one launcher call"
    assert text.rstrip().endswith('"$@"'), "extra key=value arguments are passed through"
    code_lines = [line for line in text.splitlines()[1:] if line.strip() and not line.startswith("#")][1:]
    assert all(len(re.findall(r"(?<!\S)--?\w", line)) <= 1 for line in code_lines), "one flag per line"
    for ref in REPO_PATH.findall(body):
        assert (REPO / ref).exists(), f"{path.name} refers to missing {ref}"
    if "--config" not in args:
        return  # the export step
    from tempnet.config import load_config

    config = args[args.index("--config") + 1]
    overrides = [a for a in args[args.index("--config") + 2:] if "=" in a and not a.startswith("-")]
    cfg = load_config(LMTrainConfig, REPO / config, overrides)
    cfg.check_runnable()
    world = next(int(args[args.index(flag) + 1]) for flag in ("--nproc_per_node", "--num_gpus", "--num_processes")
                 if flag in args)
    cfg.train.accumulation_steps(world)  # the global batch divides over the script's GPUs
    if args[0] == "deepspeed" or (args[0] == "torchrun" and cfg.engine.name != "ddp"):
        assert cfg.engine.name == "deepspeed"
    if args[:2] == ["accelerate", "launch"]:
        assert cfg.engine.name == "accelerate"


def test_readmes_name_every_script():
    for folder in FOLDERS:
        readme = (REPO / folder / "README.md").read_text()
        for script in (REPO / folder / "scripts").glob("*.sh"):
            assert f"{folder}/scripts/{script.name}" in readme, f"{folder}/README.md misses {script.name}"
        assert f"python {folder}/train.py --config {folder}/configs/debug.yaml" in readme


PAPER = {  # (config, field, value): the paper's settings, or the authors' code where the paper is silent
    "GPT_2/configs/scratch.yaml": {"tempnet.rho": 8.0, "tempnet.tau_min": 0.5, "tempnet.tau_max": 5.0,
                                   "tempnet.lr": 2e-6, "tempnet.lr_schedule": "constant", "tempnet.weight_decay": 0.1,
                                   "tempnet.hidden_size": 256, "optim.lr": 6e-4, "optim.min_lr": 6e-5,
                                   "optim.betas": (0.9, 0.95), "optim.weight_decay": 0.1, "optim.grad_clip": 1.0,
                                   "optim.warmup_steps": 500, "train.max_steps": 50_000, "train.precision": "fp16",
                                   "data.seq_len": 2048, "model.base.n_layer": 12, "model.base.n_embd": 768},
    "LLaMA-1/configs/finetune_7b.yaml": {"tempnet.tau_min": 0.01, "tempnet.tau_max": 2.0, "tempnet.rho": 10.0,
                                         "optim.lr": 2e-4, "optim.min_lr": 5e-5, "train.max_steps": 5000,
                                         "train.global_batch_size": 16, "train.precision": "fp16",
                                         "optim.warmup_steps": 50},
    "LLaMA-2/configs/frozen_7b.yaml": {"model.mode": "frozen", "tempnet.rho": 8.5, "tempnet.tau_min": 0.01,
                                       "tempnet.tau_max": 2.0, "tempnet.lr": 1e-4, "tempnet.weight_decay": 1e-2,
                                       "data.seq_len": 512, "train.micro_batch_size": 4,
                                       "train.global_batch_size": 16, "train.max_steps": 30_000,
                                       "train.precision": "bf16", "optim.warmup_steps": 300},
    "LLaMA-2/configs/chat_7b.yaml": {"model.mode": "frozen", "tempnet.rho": 8.5, "tempnet.tau_max": 1.2,
                                     "data.format": "alpaca", "tempnet.lr": 1e-4, "train.max_steps": 30_000},
}


@pytest.mark.parametrize("path", sorted(PAPER), ids=str)
def test_paper_settings_are_pinned(path):
    from tempnet.config import config_to_dict, load_config

    tree = config_to_dict(load_config(LMTrainConfig, REPO / path))
    for name, expected in PAPER[path].items():
        value = tree
        for part in name.split("."):
            value = value[part]
        assert value == expected, f"{path}: {name} = {value!r}, the paper's setting is {expected!r}"
