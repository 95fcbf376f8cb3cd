"""Every shipped Bimodal-CL config loads against the schema; cc3m.yaml is the paper's setting; every launch
script is valid bash, makes one torchrun call and points at files that exist."""

import re
import subprocess

import pytest

from bimodal_runs import REPO
from tempnet.config import load_config
from tempnet.train.clip_config import LOSS_NAMES, BimodalConfig

CONFIGS = sorted((REPO / "Bimodal-CL" / "configs").glob("*.yaml"))
SCRIPTS = sorted((REPO / "Bimodal-CL" / "scripts").glob("*.sh"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(BimodalConfig, path)
    for s in cfg.eval.retrieval:
        assert s.json and s.image_root
    for z in cfg.eval.zeroshot:
        assert z.root and z.kind


def test_cc3m_is_the_paper_setting():
    cfg = load_config(BimodalConfig, REPO / "Bimodal-CL" / "configs" / "cc3m.yaml")
    assert (cfg.model.image.name, cfg.model.text.name, cfg.model.embed_dim) == ("resnet50", "distilbert-base-uncased", 256)
    assert (cfg.train.epochs, cfg.optim.lr, cfg.train.batch_size) == (30, 8e-4, 128)
    assert (cfg.loss_args.gamma, cfg.loss_args.rho, cfg.loss_args.tau) == (0.8, 7.0, 0.01)
    assert (cfg.tempnet.tau_min, cfg.tempnet.tau_max, cfg.tempnet.lr, cfg.tempnet.lr_decay) == (0.005, 0.05, 3e-5, 0.9)
    assert cfg.tempnet.num_prototypes == 256 and cfg.train.precision == "fp16"
    assert [s.name for s in cfg.eval.retrieval] == ["flickr30k", "mscoco", "coco_val"]
    # where the paper is silent, the authors' code: warm-up from 1e-5, cosine per epoch, the best COCO-val checkpoint
    assert (cfg.optim.warmup_start_lr, cfg.optim.schedule_unit, cfg.optim.min_lr) == (1e-5, "epoch", 1e-5)
    assert cfg.eval.select_best == "coco_val/r_mean" and cfg.loss_args.isogclr_grad_clamp == 5.0
    assert cfg.tempnet.prototype_init == "projections"


@pytest.mark.parametrize("overrides, match", [
    (["loss=simclr"], "unknown loss"),
    (["tempnet.tau_min=0.1", "tempnet.tau_max=0.05"], "tau_min must be smaller"),
    (["train.precision=fp8"], "train.precision"),
    (["loss_args.gamma=0"], "gamma"),
    (["loss_args.isogclr_tau_init=0.5"], "isogclr_tau_init"),
    (["model.text.source=sentencepiece"], "model.text.source"),
    (["eval.retrieval=[{name: a, json: x, image_root: y}, {name: a, json: x, image_root: y}]"], "unique"),
    (["train.not_a_key=1"], "unknown config key"),
    (["eval.select_best=coco_val/r_mean"], "names the eval set 'coco_val'"),
])
def test_config_checks(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(BimodalConfig, None, overrides)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_launch_script(path):
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert text.startswith("#!/usr/bin/env bash\n# Paper, CLIP table, Bimodal-CL row")
    launch = 'exec torchrun "${LAUNCHER_ARGS[@]}" \\\n'  # the node flags of scripts/nodes.sh
    assert len(re.findall(r"^exec torchrun\b", text, flags=re.M)) == 1 and launch in text
    assert 'source scripts/nodes.sh\nlauncher_args torchrun "${NPROC:-' in text
    referenced = re.findall(r"Bimodal-CL/[\w./-]+\.(?:py|yaml)", text)
    assert referenced and all((REPO / p).is_file() for p in referenced), referenced
    for flag_line in text.split(launch, 1)[1].splitlines()[:-1]:
        assert flag_line.endswith(" \\"), f"one flag per line, each continued: {flag_line!r}"
    losses = re.findall(r"loss=(\w+)", text)
    assert all(loss in LOSS_NAMES for loss in losses)
    if path.name.startswith("cc3m_"):
        assert losses == [path.stem.removeprefix("cc3m_")]


def test_a_script_per_method_and_evaluation():
    names = {p.stem for p in SCRIPTS if not p.stem.startswith("cc12m_")}  # the web-scale settings beyond the paper
    assert {f"cc3m_{loss}" for loss in LOSS_NAMES} | {"eval_flickr30k", "eval_mscoco", "eval_zeroshot"} == names
