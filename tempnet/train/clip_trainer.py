"""The Bimodal-CL trainer: CLIP with TempNet and its baselines, and zero-shot evaluation.

    python Bimodal-CL/train.py --config Bimodal-CL/configs/debug.yaml --output-dir DIR [key=value ...]
    torchrun --nproc_per_node 8 Bimodal-CL/train.py --config Bimodal-CL/configs/cc3m.yaml --output-dir DIR loss=clip
    python Bimodal-CL/train.py --config ... --output-dir DIR --resume                  # continue DIR's newest checkpoint
    python Bimodal-CL/train.py --config ... --output-dir DIR --evaluate --checkpoint DIR/checkpoint-N

`loss=NAME` picks the loss (a name in tempnet.losses.CONTRASTIVE_LOSSES). Writes DIR/config.yaml, DIR/metrics.jsonl,
DIR/eval.json (latest evaluation; history in DIR/eval_log.jsonl) and DIR/checkpoint-<step>/ in the layout
of tempnet.train.checkpoint (model.safetensors, tempnets.safetensors, optimizer.pt with the per-sample loss
state, rng_state_<rank>.pt, trainer_state.json), written, resumed and guarded by the run protocol
(tempnet.train.protocol: lock, preemption, resuming, config.yaml, logging, divergence guard, full-disk errors)
shared with the LLM trainer, as is the optimizer step (tempnet.train.engines.OptimizerStep). Every rank
computes the same global-batch loss (the losses gather features), so the loss is multiplied by the world size
before DDP averages the gradients.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Sequence

import torch

from tempnet import distributed as tdist
from tempnet.config import config_to_dict
from tempnet.data.image_text import RetrievalSet
from tempnet.data.image_transforms import center_crop_transform, eval_transform
from tempnet.data.zeroshot_sets import build_zeroshot_set
from tempnet.losses import CONTRASTIVE_LOSSES
from tempnet.losses.sample_state import cosine_gamma, set_gamma
from tempnet.train import checkpoint as ckpt
from tempnet.train import protocol
from tempnet.train.best import keep_if_best
from tempnet.train.cli import build_parser, parse, run_trainer
from tempnet.train.clip_data import build_train_data, check_inputs, use_synthetic_data
from tempnet.train.engines import OptimizerStep, Stepped, wrap_ddp
from tempnet.train.logging import append_jsonl, rewind_jsonl
from tempnet.train.clip_config import RESUME_SAFE, BimodalConfig, ImageTowerConfig, ModelConfig, TextTowerConfig
from tempnet.train.clip_eval import evaluate_retrieval, evaluate_zeroshot
from tempnet.modules import TempNetPair
from tempnet.train.clip_model import DualEncoder, build_image_tower, build_text_tower, build_tokenizer
from tempnet.train.optim import decay_groups, warmup_cosine
from tempnet.train.precision import autocast
from tempnet.train.signals import Preemption

__all__ = ["main", "cli", "train", "evaluate", "ClipRun", "use_synthetic_data", "keep_if_best"]


def _parser(description: str):
    parser = build_parser(description)
    parser.epilog = "loss=NAME picks the contrastive loss: " + " | ".join(CONTRASTIVE_LOSSES)
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the model of --checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint-<step> directory for --evaluate")
    return parser


def main(argv: Sequence[str] | None = None, description: str = "CLIP training with TempNet") -> dict | None:
    """Train (or with --evaluate only evaluate); returns the last evaluation record."""
    parser = _parser(description)
    args, cfg = parse(argv, BimodalConfig, parser)
    if args.evaluate and not args.checkpoint:
        parser.error("--evaluate needs --checkpoint PATH")
    _, _, local_rank = tdist.init_from_env()
    try:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if args.evaluate:
            return evaluate(cfg, args.checkpoint, args.output_dir, device)
        return train(cfg, args.output_dir, device, resume=args.resume, overwrite=args.overwrite)
    finally:
        tdist.destroy()


def cli(description: str = "CLIP training with TempNet") -> int:
    """`main` from the command line: exit 2 on a user error, 3 on divergence, 128 + signal when preempted."""
    return run_trainer(lambda argv: main(argv, description))


def build_model(mcfg: ModelConfig, device: torch.device):
    image, image_dim = build_image_tower(mcfg.image.source, mcfg.image.name, mcfg.image.pretrained, mcfg.image.kwargs)
    text, text_dim = build_text_tower(mcfg.text.source, mcfg.text.name, mcfg.text.pretrained,
                                      mcfg.text.config_overrides)
    tokenizer = build_tokenizer(mcfg.text.source, mcfg.text.name, mcfg.text.tokenizer, mcfg.text.max_length)
    return DualEncoder(image, image_dim, text, text_dim, mcfg.embed_dim).to(device), tokenizer


class EvalSets:
    """The configured evaluation sets, loaded once; `run` returns one flat dict of metrics."""

    def __init__(self, cfg: BimodalConfig, device: torch.device):
        size, e = cfg.model.image_size, cfg.eval
        self.cfg, self.device = cfg, device
        self.retrieval = [(s.name, RetrievalSet(s.json, s.image_root, cfg.data.max_words)) for s in e.retrieval]
        self.zeroshot = [(z.name, *build_zeroshot_set(z.kind, z.root, center_crop_transform(size), z.templates))
                         for z in e.zeroshot]
        self.retrieval_transform = eval_transform(size)

    def run(self, model, tokenizer) -> dict[str, float]:
        e, out = self.cfg.eval, {}
        amp = lambda: autocast(self.device, self.cfg.train.precision)  # noqa: E731
        for i, (name, split) in enumerate(self.retrieval):
            m = evaluate_retrieval(model, tokenizer, split, self.retrieval_transform, e.batch_size, e.num_workers, amp)
            out.update({**(m if i == 0 else {}), **{f"{name}/{k}": v for k, v in m.items()}})
        for i, (name, dataset, names, templates) in enumerate(self.zeroshot):
            m = evaluate_zeroshot(model, tokenizer, dataset, names, templates, e.batch_size, e.num_workers, amp)
            out.update({**(m if i == 0 else {}), **{f"{name}/{k}": v for k, v in m.items()}})
        return out


def write_eval(out: Path, record: dict) -> None:
    (out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    append_jsonl(out / "eval_log.jsonl", record)
    print("eval " + " ".join(f"{k}={v:.2f}" for k, v in record.items() if "/" not in k and isinstance(v, float)),
          flush=True)


def evaluate(cfg: BimodalConfig, checkpoint: Path, out: Path, device: torch.device) -> dict:
    """--evaluate: the model section comes from the checkpoint's config (what was trained), weights from it."""
    path = Path(checkpoint)
    if path.name == "model.safetensors":
        path = path.parent
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"--checkpoint: no model weights at {path / 'model.safetensors'}")
    info = {}
    if (path / "config.yaml").is_file():
        m = ckpt.load_yaml(path / "config.yaml")["model"]
        cfg = replace(cfg, model=ModelConfig(image=ImageTowerConfig(**m["image"]), text=TextTowerConfig(**m["text"]),
                                             embed_dim=m["embed_dim"], image_size=m["image_size"]))
    if (path / "trainer_state.json").is_file():
        info = json.loads((path / "trainer_state.json").read_text())
    if cfg.data.synthetic:
        cfg = use_synthetic_data(cfg, out)
    mcfg = replace(cfg.model, image=replace(cfg.model.image, pretrained=False),
                   text=replace(cfg.model.text, pretrained=False))  # the weights come from the checkpoint
    model, tokenizer = build_model(mcfg, device)
    model.load_state_dict(ckpt.load_weights(path / "model.safetensors", device))
    record = {"epoch": info.get("epoch"), "step": info.get("step"), "checkpoint": str(path),
              **EvalSets(cfg, device).run(model, tokenizer)}
    if tdist.is_main_process():
        Path(out).mkdir(parents=True, exist_ok=True)
        write_eval(Path(out), record)
    return record


class ClipRun:
    """Everything a run needs (data, model, TempNets, loss, optimizers, DDP wrappers); `step` is one
    optimisation step, `save` / `load` the checkpoint, `fit` the loop."""

    def __init__(self, cfg: BimodalConfig, out: Path, device: torch.device, resume: bool = False):
        self.cfg, self.out, self.device = cfg, Path(out), device
        self.world, self.rank = tdist.world_size_and_rank()
        cfg.check_runnable(self.world)  # inputs: start-of-run checks (tempnet.train.clip_config)
        t = cfg.train
        protocol.seed_everything(t.seed)  # the same initial weights on every rank
        if cfg.data.synthetic:  # the run's config: the loaded one pointed at the generated set
            self.cfg = cfg = use_synthetic_data(cfg, out)
        # checks only, before the model is built: a refused resume (config, world size) changes no file
        self.point = protocol.resume_point(self.out, config_to_dict(cfg), RESUME_SAFE) if resume else None
        self.model, self.tokenizer = build_model(cfg.model, device)
        self.data = build_train_data(cfg, self.rank, self.world, device, self.tokenizer, self.out)
        self.loader = self.data.loader  # (json: .dataset ImageTextPairs, .batch_sampler GlobalBatchSampler)
        self.dataset, self.sampler = self.loader.dataset, self.loader.batch_sampler
        tc, loss_cls = cfg.tempnet, CONTRASTIVE_LOSSES[cfg.loss]
        self.tempnets = (TempNetPair(cfg.model.embed_dim, tc.num_prototypes, tc.tau_min, tc.tau_max, tc.dropout,
                                     tc.prototype_init).to(device) if loss_cls.takes_tempnets else None)
        self.criterion = loss_cls.from_config(cfg.loss_args, self.data.num_samples)
        self.criterion.to(device)
        self._build_optimizers(self.data.steps_per_epoch)
        stepped = [Stepped(self.opt, self.sched, cfg.optim.grad_clip, list(self.model.parameters()))]
        if self.opt_t is not None:  # its schedule moves once per epoch (`_end_epoch_schedules`)
            stepped.append(Stepped(self.opt_t))
        self.update = OptimizerStep(device, t.precision, stepped)
        self.scaler = self.update.scaler
        self.ddp_model = wrap_ddp(self.model, device, t.find_unused_parameters)
        self.ddp_tempnets = wrap_ddp(self.tempnets, device) if self.tempnets is not None else None
        self.pos = {"epoch": 0, "step": 0, "step_in_epoch": 0}
        self.skipped = None

    def _build_optimizers(self, steps_per_epoch: int) -> None:
        """AdamW + warm-up/cosine for the model; Adam decayed x tempnet.lr_decay per epoch for the TempNets."""
        o = self.cfg.optim
        self.opt = torch.optim.AdamW(decay_groups(self.model.named_parameters(), o.lr, o.weight_decay), lr=o.lr,
                                     betas=tuple(o.betas), foreach=True)
        total = self.cfg.train.epochs * steps_per_epoch
        factor = warmup_cosine(o.warmup_steps, total, o.min_lr / o.lr, o.warmup_start_lr / o.lr,
                               steps_per_epoch if o.schedule_unit == "epoch" else None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
        self.opt_t = self.sched_t = None
        if self.tempnets is not None:
            self.opt_t = torch.optim.Adam(self.tempnets.parameters(), lr=self.cfg.tempnet.lr, foreach=True)
            self.sched_t = torch.optim.lr_scheduler.ExponentialLR(self.opt_t, gamma=self.cfg.tempnet.lr_decay)

    def _stateful(self) -> dict:
        """What optimizer.pt holds (state_dict objects by name)."""
        objs = {"optimizer": self.opt, "scheduler": self.sched, "tempnet_optimizer": self.opt_t,
                "tempnet_scheduler": self.sched_t, "scaler": self.scaler, "criterion": self.criterion}
        return {k: v for k, v in objs.items() if v is not None}

    # ---- one step --------------------------------------------------------------------------------
    def step(self, batch) -> dict:
        """One optimisation step on a local batch; returns the step's metrics (global-batch values)."""
        images, captions, image_ids, text_ids = batch
        ids, mask = captions if torch.is_tensor(captions[0]) else self.tokenizer(captions)  # tokenised by workers?
        dev = self.device
        images, ids, mask = images.to(dev, non_blocking=True), ids.to(dev), mask.to(dev)
        image_ids, text_ids = image_ids.to(dev), text_ids.to(dev)
        with autocast(dev, self.cfg.train.precision):
            img, txt = self.ddp_model(images, ids, mask)  # [B, E] each, unit norm
        taus = {}
        if self.tempnets is not None:
            with autocast(dev, self.cfg.train.precision):  # prototypes from a fresh run's first batch
                self.tempnets.init_from_first_batch(img, txt, partial(self.model, images, ids, mask, normalize=False))
            taus = dict(zip(("tau_image", "tau_text"), self.ddp_tempnets(img, txt)))  # [B] each
        out = self.criterion(img, txt, image_ids, text_ids, **taus)
        lr = self.sched.get_last_lr()[0]  # this step's, before the schedule moves
        self.update.zero_grad()  # (the last step's gradients stay until now, for inspection)
        self.update.backward(out["loss"] * self.world)  # each rank holds the full global loss; DDP averages
        norms = self.update.step()
        self.skipped = self.update.skipped  # fp16 dropped this update
        metrics = {**{k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}, "lr": lr,
                   "grad_norm": norms[0], "bad_samples": self.dataset.num_bad()}  # entries replaced (this rank's)
        if self.opt_t is not None:
            metrics.update(lr_tempnet=self.opt_t.param_groups[0]["lr"], grad_norm_tempnet=norms[1])
        return metrics

    # ---- checkpoints (written by the protocol: temporary directory, manifest, rename) --------------
    def write_files(self, path: Path) -> None:
        """Rank 0: the weights and optimizer.pt (the RNG files and trainer state are the protocol's)."""
        if self.rank == 0:
            ckpt.save_weights(self.model.state_dict(), path / "model.safetensors")
            if self.tempnets is not None:
                ckpt.save_weights(self.tempnets.state_dict(), path / "tempnets.safetensors")
            ckpt.save_state({k: v.state_dict() for k, v in self._stateful().items()}, path / "optimizer.pt")

    def trainer_state(self, step: int) -> dict:
        return {**self.pos, **self.data.state(), "world_size": self.world}

    def load(self, point: protocol.ResumePoint) -> None:
        """Restore everything a checkpoint holds, the RNG state included."""
        protocol.restore(point, self.load_files)

    def load_files(self, point: protocol.ResumePoint) -> None:
        """Restore the files `write_files` wrote (the data position into self.pos)."""
        path = point.path
        self.data.check_state(point.state, path)
        self.model.load_state_dict(ckpt.load_weights(path / "model.safetensors", self.device))
        if self.tempnets is not None:
            self.tempnets.load_state_dict(ckpt.load_weights(path / "tempnets.safetensors", self.device))
        stored = ckpt.load_state(path / "optimizer.pt", "cpu")  # the per-sample state may stay on the host
        for key, obj in self._stateful().items():
            obj.load_state_dict(stored[key])
        self.pos.update({k: int(point.state[k]) for k in ("epoch", "step", "step_in_epoch")})

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, preemption: Preemption) -> dict | None:
        """Epochs of `step`, evaluation and a checkpoint at each epoch end; returns the last evaluation."""
        cfg, point = self.cfg, self.point
        with protocol.Protocol.start(self.out, cfg, point, self.device, self, preemption,
                                     cfg.train.epochs * self.data.steps_per_epoch,
                                     f"{cfg.loss} [ddp x{self.world}]") as run:
            if self.rank == 0:
                self.data.write_files()
            if point is not None and cfg.eval.select_best:
                self._select_best_of(point.path)  # an epoch whose checkpoint was saved but not yet compared
            return self._epochs(run)

    def _select_best_of(self, path: Path) -> None:
        """The best-checkpoint rule for checkpoint `path`, from its epoch's row of eval_log.jsonl."""
        if self.rank == 0:
            step = int(path.name.rsplit("-", 1)[1])
            rows = [r for r in rewind_jsonl(self.out / "eval_log.jsonl", step) if r.get("step") == step]
            if rows:
                keep_if_best(self.out, path, rows[-1], self.cfg.eval.select_best)
        tdist.barrier()

    def _epochs(self, run: protocol.Protocol) -> dict | None:
        cfg, t, pos = self.cfg, self.cfg.train, self.pos
        evals = EvalSets(cfg, self.device) if self.rank == 0 else None
        record = None
        for epoch in range(pos["epoch"], t.epochs):
            self.data.set_epoch(epoch, pos["step_in_epoch"])
            if cfg.loss_args.gamma_schedule == "cosine":
                set_gamma(self.criterion, cosine_gamma(cfg.loss_args.gamma, epoch,
                                                       cfg.loss_args.gamma_decay_epochs or t.epochs))
            tic, first = time.time(), pos["step_in_epoch"]
            for batch in self.loader:
                metrics = self.step(batch)
                pos["step"] += 1
                pos["step_in_epoch"] += 1
                step, epoch_end = pos["step"], pos["step_in_epoch"] >= self.data.steps_per_epoch
                log = (lambda: {**metrics, "epoch": epoch, "sec_per_step": (time.time() - tic) / (
                    pos["step_in_epoch"] - first)}) if step % t.log_every == 0 or step == 1 else None
                stop = t.stop_after_steps is not None and step >= t.stop_after_steps
                periodic = t.periodic_save(step)
                # the epoch's end saves (and preempts) below, after its evaluation
                run.end_step(step, metrics["loss"], metrics["grad_norm"], self.skipped, metrics=log,
                             save=stop or periodic and not epoch_end, hold=stop or epoch_end)
                if stop:
                    return record
            pos["epoch"], pos["step_in_epoch"] = epoch + 1, 0
            self._end_epoch_schedules()
            run.check()  # a diverged model is neither evaluated nor saved
            if cfg.eval.every_epoch or pos["epoch"] == t.epochs:
                if self.rank == 0:
                    record = {"epoch": pos["epoch"], "step": pos["step"], **evals.run(self.model, self.tokenizer)}
                    write_eval(self.out, record)
                tdist.barrier()
            path = run.save(pos["step"])
            if cfg.eval.select_best and self.rank == 0 and record is not None:
                keep_if_best(self.out, path, record, cfg.eval.select_best)
            tdist.barrier()
            if run.signum:
                run.preempt(pos["step"])
            if t.stop_after_epochs and pos["epoch"] >= t.stop_after_epochs:
                break
        return record

    def _end_epoch_schedules(self) -> None:
        if self.sched_t is not None:
            self.sched_t.step()


def train(cfg: BimodalConfig, output_dir: str | Path, device: torch.device, resume: bool = False,
          overwrite: bool = False) -> dict | None:
    """Run (or resume) one training run in `output_dir`; returns the last evaluation record."""
    with protocol.running(output_dir, resume, overwrite, lambda: check_inputs(cfg)) as (out, preemption):
        return ClipRun(cfg, out, device, resume).fit(preemption)
