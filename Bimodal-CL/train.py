"""Bimodal-CL: CLIP training with TempNet and its baselines, and zero-shot evaluation (the paper's CLIP table).

    python Bimodal-CL/train.py --config Bimodal-CL/configs/debug.yaml --output-dir DIR [key=value ...]
    torchrun --nproc_per_node 8 Bimodal-CL/train.py --config Bimodal-CL/configs/cc3m.yaml --output-dir DIR loss=clip
    python Bimodal-CL/train.py --config ... --output-dir DIR --resume                  # continue from DIR's newest checkpoint
    python Bimodal-CL/train.py --config ... --output-dir DIR --evaluate --checkpoint DIR/checkpoint-N

`loss=clip|cyclip|sogclr|isogclr|isogclr_tempnet` picks the loss. Writes DIR/config.yaml, DIR/metrics.jsonl
(step, loss, ...), DIR/eval.json (latest evaluation; history in DIR/eval_log.jsonl) and DIR/checkpoint-<step>/.
Every rank computes the same global-batch loss (the losses gather features), so the loss is multiplied
by the world size before DDP averages the gradients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from tempnet import distributed as tdist
from tempnet.config import config_to_dict, load_config, save_config
from tempnet.data.image_text import ImageTextPairs, RetrievalSet
from tempnet.data.image_transforms import center_crop_transform, eval_transform, train_transform
from tempnet.data.sampler import GlobalBatchSampler
from tempnet.data.synthetic_image_text import make_synthetic_image_text
from tempnet.data.zeroshot_sets import build_zeroshot_set
from tempnet.losses import CONTRASTIVE_LOSSES
from tempnet.train import checkpoint as ckpt
from tempnet.train.clip_config import (BimodalConfig, ImageTowerConfig, ModelConfig, RetrievalSetConfig, TextTowerConfig,
                                       ZeroShotSetConfig)
from tempnet.train.clip_eval import evaluate_retrieval, evaluate_zeroshot
from tempnet.train.clip_model import DualEncoder, TempNetPair, build_image_tower, build_text_tower, build_tokenizer
from tempnet.train.logging import MetricsLogger

# constructor arguments of each loss, from the config (num_samples = size of the per-sample state)
LOSS_KWARGS = {
    "clip": lambda a, n: dict(tau=a.tau),
    "cyclip": lambda a, n: dict(tau=a.tau, lambda_inmodal=a.lambda_inmodal, lambda_crossmodal=a.lambda_crossmodal),
    "sogclr": lambda a, n: dict(num_samples=n, gamma=a.gamma, tau=a.tau),
    "isogclr": lambda a, n: dict(num_samples=n, gamma=a.gamma, rho=a.rho, tau_init=a.isogclr_tau_init,
                                 tau_min=a.isogclr_tau_min, tau_max=a.isogclr_tau_max, eta=a.isogclr_eta,
                                 beta=a.isogclr_beta),
    "isogclr_tempnet": lambda a, n: dict(num_samples=n, gamma=a.gamma, rho=a.rho),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see tempnet/train/clip_config.py for every key)")
    p.add_argument("--output-dir", required=True, help="checkpoints, metrics.jsonl and eval.json go here")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output-dir")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the model of --checkpoint")
    p.add_argument("--checkpoint", help="a checkpoint-<step> directory (or its model.pt) for --evaluate")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. loss=clip train.epochs=3")
    args = p.parse_args(argv)
    if args.evaluate and not args.checkpoint:
        p.error("--evaluate needs --checkpoint PATH")
    return args


def _autocast(cfg: BimodalConfig, device: torch.device):
    dtype = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}.get(cfg.train.precision)
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def use_synthetic_data(cfg: BimodalConfig, out: Path) -> None:
    """Generate the synthetic set (rank 0, others wait) and point training and evaluation at it."""
    root = out / "synthetic_data"
    if tdist.is_main_process():
        make_synthetic_image_text(root, num_train=cfg.data.synthetic_pairs)
    tdist.barrier()
    cfg.data.train_json, cfg.data.image_root = str(root / "train.json"), str(root)
    cfg.eval.retrieval = [RetrievalSetConfig("synthetic", str(root / "retrieval.json"), str(root))]
    cfg.eval.zeroshot = [ZeroShotSetConfig("synthetic", "folder", str(root / "zeroshot"))]


def build_model(mcfg: ModelConfig, device: torch.device):
    image, image_dim = build_image_tower(mcfg.image.source, mcfg.image.name, mcfg.image.pretrained, mcfg.image.kwargs)
    text, text_dim = build_text_tower(mcfg.text.source, mcfg.text.name, mcfg.text.pretrained,
                                      mcfg.text.config_overrides)
    tokenizer = build_tokenizer(mcfg.text.source, mcfg.text.name, mcfg.text.tokenizer, mcfg.text.max_length)
    return DualEncoder(image, image_dim, text, text_dim, mcfg.embed_dim).to(device), tokenizer


def build_optimizers(cfg: BimodalConfig, model, tempnets, steps_per_epoch: int):
    """AdamW + cosine-with-warm-up for the model; Adam + x lr_decay per epoch for the TempNets."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]  # biases and norms
    t = cfg.train
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=t.lr, betas=t.betas, foreach=True)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, t.warmup_steps, t.epochs * steps_per_epoch,
                                                        min_lr_rate=t.min_lr_ratio)
    if tempnets is None:
        return opt, sched, None, None
    opt_t = torch.optim.Adam(tempnets.parameters(), lr=cfg.tempnet.lr, foreach=True)
    return opt, sched, opt_t, torch.optim.lr_scheduler.ExponentialLR(opt_t, gamma=cfg.tempnet.lr_decay)


class EvalSets:
    """The configured evaluation sets, loaded once; `run` returns one flat dict of metrics."""

    def __init__(self, cfg: BimodalConfig):
        size, e = cfg.model.image_size, cfg.eval
        self.cfg = cfg
        self.retrieval = [(s.name, RetrievalSet(s.json, s.image_root, cfg.data.max_words)) for s in e.retrieval]
        self.zeroshot = [(z.name, *build_zeroshot_set(z.kind, z.root, center_crop_transform(size), z.templates))
                         for z in e.zeroshot]
        self.retrieval_transform = eval_transform(size)

    def run(self, model, tokenizer, autocast) -> dict[str, float]:
        e, out = self.cfg.eval, {}
        for i, (name, split) in enumerate(self.retrieval):
            m = evaluate_retrieval(model, tokenizer, split, self.retrieval_transform, e.batch_size, e.num_workers, autocast)
            out.update({**(m if i == 0 else {}), **{f"{name}/{k}": v for k, v in m.items()}})
        for i, (name, dataset, names, templates) in enumerate(self.zeroshot):
            m = evaluate_zeroshot(model, tokenizer, dataset, names, templates, e.batch_size, e.num_workers, autocast)
            out.update({**(m if i == 0 else {}), **{f"{name}/{k}": v for k, v in m.items()}})
        return out


def write_eval(out: Path, record: dict) -> None:
    (out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    with (out / "eval_log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print("eval " + " ".join(f"{k}={v:.2f}" for k, v in record.items() if "/" not in k and isinstance(v, float)),
          flush=True)


def evaluate_only(cfg: BimodalConfig, args, out: Path, device: torch.device) -> dict:
    """--evaluate: the model section comes from the checkpoint (what was trained), weights from model.pt."""
    path = Path(args.checkpoint)
    model_file = path / "model.pt" if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(f"--checkpoint: no model weights at {model_file}")
    state_file, info = model_file.parent / "trainer_state.pt", {}
    if state_file.is_file():
        info = torch.load(state_file, map_location="cpu", weights_only=False)
        m = info["config"]["model"]
        cfg.model = ModelConfig(image=ImageTowerConfig(**m["image"]), text=TextTowerConfig(**m["text"]),
                                embed_dim=m["embed_dim"], image_size=m["image_size"])
    mcfg = replace(cfg.model, image=replace(cfg.model.image, pretrained=False),
                   text=replace(cfg.model.text, pretrained=False))  # the weights come from the checkpoint
    model, tokenizer = build_model(mcfg, device)
    model.load_state_dict(torch.load(model_file, map_location=device, weights_only=True))
    record = {"epoch": info.get("epoch"), "step": info.get("step"), "checkpoint": str(path),
              **EvalSets(cfg).run(model, tokenizer, _autocast(cfg, device))}
    if tdist.is_main_process():
        write_eval(out, record)
    return record


def save_checkpoint(out: Path, cfg: BimodalConfig, model, tempnets, criterion, optim, pos: dict) -> Path:
    """checkpoint-<step>/: model.pt (weights only, for --evaluate), trainer_state.pt, rng_rank<r>.pt, COMPLETE."""
    path, (world, rank) = ckpt.checkpoint_dir(out, pos["step"]), tdist.world_size_and_rank()
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / "COMPLETE").unlink(missing_ok=True)
        torch.save(model.state_dict(), path / "model.pt")
        state = {"config": config_to_dict(cfg), "world_size": world, **pos,
                 "criterion": criterion.state_dict(), **{k: v.state_dict() for k, v in optim.items() if v is not None}}
        if tempnets is not None:
            state["tempnets"] = tempnets.state_dict()
        torch.save(state, path / "trainer_state.pt")
    tdist.barrier()
    torch.save(ckpt.rng_state(), path / f"rng_rank{rank}.pt")
    tdist.barrier()
    if rank == 0:
        ckpt.mark_complete(path)
        ckpt.prune_checkpoints(out, cfg.train.keep_last)
    return path


def load_checkpoint(path: Path, model, tempnets, criterion, optim) -> dict:
    """Restore everything save_checkpoint wrote; returns the data position {epoch, step, step_in_epoch}."""
    world, rank = tdist.world_size_and_rank()
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    criterion.load_state_dict(state["criterion"])
    if tempnets is not None:
        tempnets.load_state_dict(state["tempnets"])
    for key, obj in optim.items():
        if obj is not None:
            obj.load_state_dict(state[key])
    if state["world_size"] != world:
        print(f"warning: resuming a {state['world_size']}-process run with {world} processes", file=sys.stderr)
    rng_file = path / f"rng_rank{rank}.pt"
    ckpt.set_rng_state(torch.load(rng_file if rng_file.exists() else path / "rng_rank0.pt", weights_only=False))
    return {k: state[k] for k in ("epoch", "step", "step_in_epoch")}


def train_step(r: SimpleNamespace, batch) -> dict:
    """One optimisation step on a local batch; returns the step's metrics (global-batch values)."""
    images, captions, image_ids, text_ids = batch
    ids, mask = r.tokenizer(captions)
    dev = r.device
    images, ids, mask = images.to(dev, non_blocking=True), ids.to(dev), mask.to(dev)
    image_ids, text_ids = image_ids.to(dev), text_ids.to(dev)
    with r.autocast():
        img, txt = r.ddp_model(images, ids, mask)  # [B, E] each, unit norm
    tau_i = tau_t = None  # only the TempNet loss takes temperatures; every loss returns the same dict
    if r.tempnets is not None:
        if not bool(r.tempnets.initialised):  # the first batch of a fresh run, gathered over ranks
            r.tempnets.init_prototypes(tdist.gather_with_grad(img.detach().float()),
                                       tdist.gather_with_grad(txt.detach().float()))
        tau_i, tau_t = r.ddp_tempnets(img, txt)  # [B] each
    out = r.criterion(img, txt, image_ids, text_ids, tau_image=tau_i, tau_text=tau_t)
    loss = out["loss"]  # minimised; the other entries (terms, tau statistics) are detached and only logged
    opts = [o for o in (r.opt, r.opt_t) if o is not None]
    for o in opts:
        o.zero_grad(set_to_none=True)
    r.scaler.scale(loss * r.world).backward()  # each rank holds the full global loss; DDP averages
    for o in opts:
        r.scaler.unscale_(o)
    params = [p for p in r.model.parameters() if p.grad is not None]
    clip = r.cfg.train.grad_clip
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0
                 else torch.nn.utils.get_total_norm([p.grad for p in params]))
    metrics = {**{k: v.detach() for k, v in out.items()}, "lr": r.sched.get_last_lr()[0], "grad_norm": grad_norm}
    if r.opt_t is not None:
        metrics["lr_tempnet"] = r.opt_t.param_groups[0]["lr"]
        metrics["grad_norm_tempnet"] = torch.nn.utils.get_total_norm(
            [p.grad for p in r.tempnets.parameters() if p.grad is not None])
    for o in opts:
        r.scaler.step(o)
    r.scaler.update()
    r.sched.step()
    return metrics


def setup(cfg: BimodalConfig, device: torch.device) -> SimpleNamespace:
    """Everything a run needs (data, model, TempNets, loss, optimizers, DDP wrappers), freshly initialised."""
    world, rank = tdist.world_size_and_rank()
    t = cfg.train
    if not cfg.data.train_json:
        raise ValueError("data.train_json is empty: give the training pairs (or data.synthetic=true)")
    transform = train_transform(cfg.model.image_size, cfg.data.augment, randaugment_ops=cfg.data.randaugment_ops,
                                randaugment_magnitude=cfg.data.randaugment_magnitude)
    dataset = ImageTextPairs(cfg.data.train_json, cfg.data.image_root, transform, cfg.data.max_words, seed=t.seed)
    sampler = GlobalBatchSampler(len(dataset), t.batch_size, world, rank, seed=t.seed)
    # an own generator: creating the loader's iterator must not draw from the global RNG (exact resume)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(t.seed))
    model, tokenizer = build_model(cfg.model, device)
    tc = cfg.tempnet
    tempnets = (TempNetPair(cfg.model.embed_dim, tc.num_prototypes, tc.tau_min, tc.tau_max, tc.dropout).to(device)
                if cfg.loss == "isogclr_tempnet" else None)
    criterion = CONTRASTIVE_LOSSES[cfg.loss](**LOSS_KWARGS[cfg.loss](cfg.loss_args, len(dataset))).to(device)
    opt, sched, opt_t, sched_t = build_optimizers(cfg, model, tempnets, len(sampler))
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "amp_fp16" and device.type == "cuda")
    return SimpleNamespace(
        cfg=cfg, device=device, world=world, rank=rank, autocast=_autocast(cfg, device), dataset=dataset,
        sampler=sampler, loader=loader, model=model, tokenizer=tokenizer, tempnets=tempnets, criterion=criterion,
        opt=opt, sched=sched, opt_t=opt_t, sched_t=sched_t, scaler=scaler,
        optim={"optimizer": opt, "scheduler": sched, "tempnet_optimizer": opt_t, "tempnet_scheduler": sched_t,
               "scaler": scaler},
        ddp_model=DDP(model, find_unused_parameters=t.find_unused_parameters) if world > 1 else model,
        ddp_tempnets=DDP(tempnets) if world > 1 and tempnets is not None else tempnets)


def train(cfg: BimodalConfig, args, out: Path, device: torch.device) -> dict | None:
    """The training loop: epochs of train_step, evaluation and a checkpoint at each epoch end."""
    r, t = setup(cfg, device), cfg.train
    pos = {"epoch": 0, "step": 0, "step_in_epoch": 0}
    if args.resume:
        path = ckpt.latest_checkpoint(out)
        pos = load_checkpoint(path, r.model, r.tempnets, r.criterion, r.optim)
        print(f"resumed from {path} at epoch {pos['epoch']}, step {pos['step']}", flush=True)
    logger = MetricsLogger(out, resume_step=pos["step"] if args.resume else None)
    if r.rank == 0:
        save_config(cfg, out / "config.yaml")
    evals = EvalSets(cfg) if r.rank == 0 else None
    save = lambda: save_checkpoint(out, cfg, r.model, r.tempnets, r.criterion, r.optim, pos)  # noqa: E731
    record = None
    for epoch in range(pos["epoch"], t.epochs):
        r.dataset.set_epoch(epoch)
        r.sampler.set_epoch(epoch, pos["step_in_epoch"])
        tic, first = time.time(), pos["step_in_epoch"]
        for batch in r.loader:
            metrics = train_step(r, batch)
            pos["step"] += 1
            pos["step_in_epoch"] += 1
            if pos["step"] % t.log_every == 0 or pos["step"] == 1:
                metrics.update(epoch=epoch, sec_per_step=(time.time() - tic) / (pos["step_in_epoch"] - first))
                rec = logger.log(pos["step"], metrics)
                if r.rank == 0:
                    print(" ".join(f"{k}={v:.4g}" for k, v in rec.items()), flush=True)
            stop = t.stop_after_steps and pos["step"] >= t.stop_after_steps
            if stop or (t.save_every_steps and pos["step"] % t.save_every_steps == 0):
                save()
            if stop:
                logger.close()
                return record
        pos["epoch"], pos["step_in_epoch"] = epoch + 1, 0
        if r.sched_t is not None:
            r.sched_t.step()
        if cfg.eval.every_epoch or pos["epoch"] == t.epochs:
            if r.rank == 0:
                record = {"epoch": pos["epoch"], "step": pos["step"], **evals.run(r.model, r.tokenizer, r.autocast)}
                write_eval(out, record)
            tdist.barrier()
        save()
        if t.stop_after_epochs and pos["epoch"] >= t.stop_after_epochs:
            break
    logger.close()
    return record


def main(argv=None) -> dict | None:
    """Train (or with --evaluate only evaluate); returns the last evaluation record."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(BimodalConfig, args.config, args.overrides)
    _, _, local_rank = tdist.init_from_env()
    try:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        out = Path(args.output_dir)
        if tdist.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
        tdist.barrier()
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        if cfg.data.synthetic:
            use_synthetic_data(cfg, out)
        if args.evaluate:
            return evaluate_only(cfg, args, out, device)
        return train(cfg, args, out, device)
    finally:
        tdist.destroy()


if __name__ == "__main__":
    main()
