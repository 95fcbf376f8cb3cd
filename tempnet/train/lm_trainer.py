"""The LLM trainer shared by GPT_2, LLaMA-1 and LLaMA-2: `main(argv)` parses, `train` runs.

    python <folder>/train.py --config <folder>/configs/debug.yaml --output-dir DIR [key=value ...]
                             [--resume | --overwrite]

A run writes DIR/config.yaml (the resolved config), DIR/metrics.jsonl (+ DIR/tensorboard),
DIR/checkpoint-<step>/ (the newest train.keep_last of them) and, once train.max_steps are done,
DIR/final/ (save_pretrained: loadable by the Hugging Face integration and lm-eval). Every rank runs
the same code; rank 0 alone writes logs and shared files. The engine (tempnet.train.engines) hides
DDP / DeepSpeed / accelerate; the run directory, lock, preemption, resuming, config.yaml, logging, divergence
guard and checkpoint writing are the run protocol's (tempnet.train.protocol), shared with the CLIP trainer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from tempnet.config import config_to_dict, derive
from tempnet.data.lm import IGNORE_INDEX, build_token_cache, open_token_cache
from tempnet.data.sampler import StepBatchSampler
from tempnet.distributed import (all_reduce_max, all_reduce_mean, all_reduce_min, barrier, destroy, is_main_process,
                                 main_process_first, world_size_and_rank)
from tempnet.errors import check_model_path
from tempnet.train import protocol
from tempnet.train.cli import build_parser, parse, run_trainer
from tempnet.train.engines import build_engine
from tempnet.train.lm_config import RESUME_SAFE, LMTrainConfig
from tempnet.train.lm_debug import prepare_debug_assets
from tempnet.train.lm_model import build_model, load_tokenizer
from tempnet.train.optim import build_lm_optimizer, build_lm_scheduler
from tempnet.train.signals import Preemption, loader_worker_init

__all__ = ["main", "train", "cli", "LMRun"]


def main(argv: Sequence[str] | None = None, default_config: str | Path | None = None,
         description: str = "Train a causal LM with TempNet", config_cls=LMTrainConfig) -> dict:
    """Parse argv (the folders' train.py pass their default YAML) and train; returns the last metrics."""
    args, cfg = parse(argv, config_cls, build_parser(description, default_config))
    return train(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite)


def cli(default_config: str | Path | None = None, description: str = "Train a causal LM with TempNet") -> int:
    """`main` from the command line: exit 2 on a user error, 3 on divergence, 128 + signal when preempted."""
    return run_trainer(lambda argv: main(argv, default_config, description))


def check_inputs(cfg: LMTrainConfig) -> None:
    """Every input path that can be checked before a run starts (and before --overwrite removes anything)."""
    if cfg.data.synthetic:
        return
    missing = [str(f) for f in cfg.data.files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"data.files: no such file(s) {missing}")
    if cfg.data.dataset:
        check_model_path(cfg.data.dataset, "data.dataset")
    if cfg.model.mode != "scratch":
        check_model_path(cfg.model.path, "model.path")
    if cfg.model.tokenizer or cfg.model.path:
        check_model_path(cfg.model.tokenizer or cfg.model.path, "model.tokenizer")
    if cfg.engine.name == "deepspeed" and not os.path.isfile(cfg.engine.deepspeed_config):
        raise FileNotFoundError(f"engine.deepspeed_config: no such file {cfg.engine.deepspeed_config}")


def train(cfg: LMTrainConfig, output_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) one training run; returns the last logged metrics."""
    cfg.check_runnable()
    check_inputs(cfg)
    engine = build_engine(cfg)
    try:
        with protocol.running(output_dir, resume, overwrite, lambda: check_inputs(cfg)) as (out, preemption):
            return LMRun(cfg, out, engine, resume).fit(preemption)
    finally:
        engine.close()
        destroy()


class LMRun:
    """One run's state: data, model, engine, logger; `fit` is the loop."""

    def __init__(self, cfg: LMTrainConfig, output_dir: Path, engine, resume: bool):
        self.cfg, self.out, self.engine, self.resume = cfg, output_dir, engine, resume
        self.world, self.rank = world_size_and_rank()
        protocol.seed_everything(cfg.train.seed)
        with main_process_first():
            if cfg.data.synthetic:  # the run's config: the loaded one with the generated paths
                self.cfg = cfg = derive(cfg, prepare_debug_assets(cfg, output_dir))
            # before anything is written: a refused resume (config, world size) changes nothing
            self.point = protocol.resume_point(output_dir, config_to_dict(cfg), RESUME_SAFE) if resume else None
            self.tokenizer = load_tokenizer(cfg)
            cache = build_token_cache(cfg.data, self.tokenizer, cfg.data.cache_dir or output_dir / "token_cache")
        self.dataset = open_token_cache(cache, cfg.data)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and in every run
        model = build_model(cfg, self.tokenizer)
        optimizer = build_lm_optimizer(model, cfg.optim, cfg.tempnet)
        engine.prepare(model, optimizer, build_lm_scheduler(optimizer, cfg.optim, cfg.tempnet, cfg.train.max_steps))
        torch.manual_seed(cfg.train.seed + 1 + self.rank)  # dropout streams differ between ranks

    # ---- checkpoints (written by the protocol: temporary directory, manifest, rename) --------------
    def trainer_state(self, step: int) -> dict:
        return {"step": step, "world_size": self.world, "engine": self.engine.name,
                "samples_seen": step * self.cfg.train.global_batch_size}

    def write_files(self, path: Path) -> None:
        self.engine.save(path)

    def load_files(self, point: protocol.ResumePoint) -> None:
        self.engine.load(point.path)

    # ---- metrics ---------------------------------------------------------------------------------
    def _metrics(self, terms: list[dict], tokens: torch.Tensor, grad_norm, seconds: float) -> dict:
        """Global-batch metrics: means over micro-batches and ranks; tau_min/max over everything."""
        stacked = {k: torch.stack([t[k].float() for t in terms]) for k in terms[0]}
        out = {k: all_reduce_mean(v.mean()) for k, v in stacked.items() if k not in ("tau_min", "tau_max")}
        if "tau_min" in stacked:
            out["tau_min"] = all_reduce_min(stacked["tau_min"].min())
            out["tau_max"] = all_reduce_max(stacked["tau_max"].max())
        total_tokens = float(all_reduce_mean(tokens.float())) * self.world
        for group in self.engine.optimizer.param_groups:  # one lr per kind of group (see tempnet.train.optim)
            name = group.get("name", "")
            key = "lr_tempnet" if name.startswith("tempnet_") else "lr_global_tau" if name == "global_tau" else "lr"
            out.setdefault(key, group["lr"])
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        out["tokens_per_s"] = total_tokens / max(seconds, 1e-9)
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, preemption: Preemption) -> dict:
        cfg, engine = self.cfg, self.engine
        with protocol.Protocol.start(self.out, cfg, self.point, engine.device, self, preemption, cfg.train.max_steps,
                                     f"{cfg.objective} [{engine.name} x{self.world}]") as run:
            metrics = self._loop(run, self.point.step if self.point else 0)
        if (cfg.train.stop_after_steps or cfg.train.max_steps) == cfg.train.max_steps:
            run.check()
            final = self.out / "final"
            try:
                engine.save_pretrained(final)
                if is_main_process():
                    self.tokenizer.save_pretrained(final)
            except (OSError, RuntimeError) as exc:
                raise protocol.no_space_error(exc, final) or exc
            barrier()
        return metrics

    def _loop(self, run: protocol.Protocol, start: int) -> dict:
        cfg, engine = self.cfg, self.engine
        last = cfg.train.stop_after_steps or cfg.train.max_steps  # null: run to max_steps
        sampler = StepBatchSampler(len(self.dataset), cfg.train.micro_batch_size, engine.accum, self.world, self.rank,
                                   cfg.train.seed, start, cfg.train.max_steps)
        # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
        batches = iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                  pin_memory=engine.device.type == "cuda", generator=torch.Generator(),
                                  worker_init_fn=loader_worker_init))
        metrics: dict = {}
        try:
            for step in range(start + 1, last + 1):
                t0, terms, tokens = time.perf_counter(), [], torch.zeros((), device=engine.device)
                losses = []
                for k in range(engine.accum):
                    batch = {key: v.to(engine.device, non_blocking=True) for key, v in next(batches).items()}
                    with engine.micro_batch(last=k == engine.accum - 1):
                        out = engine.forward(batch)
                        engine.backward(out.loss)
                    terms.append({key: v.detach() for key, v in out.loss_terms.items()})
                    losses.append(out.loss.detach())
                    tokens += (batch["labels"] != IGNORE_INDEX).sum()
                grad_norm = engine.step()
                log = (lambda: self._metrics(terms, tokens, grad_norm, time.perf_counter() - t0)) \
                    if step % cfg.train.log_every == 0 or step == last else None
                metrics = run.end_step(step, torch.stack(losses), grad_norm, engine.skipped, metrics=log,
                                       save=cfg.train.periodic_save(step) or step == last) or metrics
        finally:
            del batches  # shuts its workers down now, not when a traceback that holds this frame goes
        return metrics
