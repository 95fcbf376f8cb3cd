"""The LLM trainer shared by GPT_2, LLaMA-1 and LLaMA-2: `main(argv, config_cls)` parses, `train` runs.

    python <folder>/train.py --config <folder>/configs/debug.yaml --output-dir DIR [key=value ...] [--resume]

A run writes DIR/config.yaml (the resolved config), DIR/metrics.jsonl (+ DIR/tensorboard),
DIR/checkpoint-<step>/ (the newest train.keep_last of them) and, once train.max_steps are done,
DIR/final/ (save_pretrained: loadable by the Hugging Face integration and lm-eval). Every rank runs
the same code; rank 0 alone writes logs and shared files. The engine (tempnet.train.engines) hides
DDP / DeepSpeed / accelerate.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from tempnet.config import load_config, save_config
from tempnet.data.lm import IGNORE_INDEX, StepBatchSampler, build_token_cache, open_token_cache
from tempnet.distributed import (all_reduce_max, all_reduce_mean, all_reduce_min, barrier, destroy, is_main_process,
                                 main_process_first, world_size_and_rank)
from tempnet.train.checkpoint import (checkpoint_dir, latest_checkpoint, mark_complete, prune_checkpoints, rng_state,
                                      set_rng_state)
from tempnet.train.engines import build_engine
from tempnet.train.lm_config import LMTrainConfig
from tempnet.train.lm_debug import prepare_debug_assets
from tempnet.train.lm_model import build_model, load_tokenizer
from tempnet.train.lm_optim import build_optimizer, build_scheduler
from tempnet.train.logging import MetricsLogger

__all__ = ["main", "train", "parse_args"]


def parse_args(argv: Sequence[str] | None, config_cls=LMTrainConfig, default_config: str | Path | None = None,
               description: str = "Train a causal LM with TempNet"):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config (overrides the defaults)")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints, logs and final/ go here")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    return args, load_config(config_cls, args.config, args.overrides)


def main(argv: Sequence[str] | None = None, config_cls=LMTrainConfig, default_config: str | Path | None = None,
         description: str = "Train a causal LM with TempNet") -> dict:
    """Parse argv (the folders' train.py pass their own config class and default YAML) and train."""
    args, cfg = parse_args(argv, config_cls, default_config, description)
    return train(cfg, args.output_dir, resume=args.resume)


def train(cfg: LMTrainConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Run (or resume) one training run; returns the last logged metrics."""
    cfg.check_runnable()
    engine = build_engine(cfg)
    try:
        return _Run(cfg, Path(output_dir), engine).fit(resume)
    finally:
        engine.close()
        destroy()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Run:
    """One run's state: data, model, engine, logger; `fit` is the loop."""

    def __init__(self, cfg: LMTrainConfig, output_dir: Path, engine):
        self.cfg, self.out, self.engine = cfg, output_dir, engine
        self.world, self.rank = world_size_and_rank()
        _seed_everything(cfg.train.seed)
        with main_process_first():
            if cfg.debug.synthetic:
                for section, values in prepare_debug_assets(cfg, output_dir).items():
                    for key, value in values.items():
                        setattr(getattr(cfg, section), key, value)
            if is_main_process():
                save_config(cfg, output_dir / "config.yaml")
            self.tokenizer = load_tokenizer(cfg)
            cache = build_token_cache(cfg.data, self.tokenizer, cfg.data.cache_dir or output_dir / "token_cache")
        self.dataset = open_token_cache(cache, cfg.data)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and in every run
        model = build_model(cfg, self.tokenizer)
        optimizer = build_optimizer(model, cfg.optim)
        engine.prepare(model, optimizer, build_scheduler(optimizer, cfg.optim, cfg.train.max_steps))
        torch.manual_seed(cfg.train.seed + 1 + self.rank)  # dropout streams differ between ranks

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, step: int) -> None:
        path = checkpoint_dir(self.out, step)
        if is_main_process():
            path.mkdir(parents=True, exist_ok=True)
        barrier()
        self.engine.save(path)
        torch.save(rng_state(), path / f"rng_state_{self.rank}.pt")
        if is_main_process():
            state = {"step": step, "world_size": self.world, "engine": self.engine.name,
                     "samples_seen": step * self.cfg.train.global_batch_size}
            (path / "trainer_state.json").write_text(json.dumps(state, indent=1))
            save_config(self.cfg, path / "config.yaml")
        barrier()
        if is_main_process():
            mark_complete(path)
            prune_checkpoints(self.out, self.cfg.train.keep_last)

    def load(self) -> int:
        path = latest_checkpoint(self.out)
        state = json.loads((path / "trainer_state.json").read_text())
        if state["world_size"] != self.world:
            raise ValueError(f"{path} was written by {state['world_size']} processes, this run has {self.world}: "
                             "resume with the same world size")
        self.engine.load(path)
        set_rng_state(torch.load(path / f"rng_state_{self.rank}.pt", weights_only=False))
        return int(state["step"])

    # ---- metrics ---------------------------------------------------------------------------------
    def _metrics(self, terms: list[dict], tokens: torch.Tensor, grad_norm, seconds: float) -> dict:
        """Global-batch metrics: means over micro-batches and ranks; tau_min/max over everything."""
        stacked = {k: torch.stack([t[k].float() for t in terms]) for k in terms[0]}
        out = {k: all_reduce_mean(v.mean()) for k, v in stacked.items() if k not in ("tau_min", "tau_max")}
        if "tau_min" in stacked:
            out["tau_min"] = all_reduce_min(stacked["tau_min"].min())
            out["tau_max"] = all_reduce_max(stacked["tau_max"].max())
        total_tokens = float(all_reduce_mean(tokens.float())) * self.world
        for group in self.engine.optimizer.param_groups:
            out["lr_tempnet" if group.get("name") == "tempnet" else "lr"] = group["lr"]
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        out["tokens_per_s"] = total_tokens / max(seconds, 1e-9)
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool) -> dict:
        from tqdm.auto import tqdm

        cfg, engine = self.cfg, self.engine
        start = self.load() if resume else 0
        last = cfg.train.stop_after_steps or cfg.train.max_steps
        sampler = StepBatchSampler(len(self.dataset), cfg.train.micro_batch_size, engine.accum, self.world, self.rank,
                                   cfg.train.seed, start, cfg.train.max_steps)
        # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
        batches = iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                  pin_memory=engine.device.type == "cuda", generator=torch.Generator()))
        logger = MetricsLogger(self.out, tensorboard=cfg.train.tensorboard, resume_step=start if resume else None)
        bar = tqdm(total=cfg.train.max_steps, initial=start, disable=not (is_main_process() and cfg.train.progress_bar),
                   desc=f"{cfg.objective} [{engine.name} x{self.world}]", dynamic_ncols=True)
        metrics: dict = {}
        for step in range(start + 1, last + 1):
            t0, terms, tokens = time.perf_counter(), [], torch.zeros((), device=engine.device)
            for k in range(engine.accum):
                batch = {key: v.to(engine.device, non_blocking=True) for key, v in next(batches).items()}
                with engine.micro_batch(last=k == engine.accum - 1):
                    out = engine.forward(batch)
                    engine.backward(out.loss)
                terms.append({key: v.detach() for key, v in out.loss_terms.items()})
                tokens += (batch["labels"] != IGNORE_INDEX).sum()
            grad_norm = engine.step()
            if step % cfg.train.log_every == 0 or step == last:
                metrics = logger.log(step, self._metrics(terms, tokens, grad_norm, time.perf_counter() - t0))
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tau=f"{metrics.get('tau_mean', float('nan')):.3f}")
            bar.update(1)
            if step % cfg.train.save_every == 0 or step == last:
                self.save(step)
        bar.close()
        logger.close()
        if last == cfg.train.max_steps:
            final = self.out / "final"
            engine.save_pretrained(final)
            if is_main_process():
                self.tokenizer.save_pretrained(final)
            barrier()
        return metrics
