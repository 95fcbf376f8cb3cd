"""The engines: one optimizer step for both trainers, and the LLM trainer's three distributed back-ends.

`OptimizerStep` is the update every trainer runs after its forward: the loss scaled into backward (fp16), then
for a list of optimizers unscale, clip (each its own norm), step (the GradScaler skips the update of an
optimizer whose gradients are not finite and lowers its scale: `skipped`), scheduler. `zero_grad()` clears
the gradients: the LLM engine right after the step, the CLIP step before its backward (kept for inspection).
The CLIP trainer runs it on its model's and its TempNets' optimizers under `wrap_ddp`; the LLM engine `ddp`
is the same step around one optimizer.

The LLM trainer's loop is the same for all three back-ends; an engine owns what differs between them:
process-group set-up, wrapping, mixed precision, gradient accumulation, clipping, checkpoint
files and gathering the final weights. Per optimizer step the trainer calls, for each of the
`accum` micro-batches, `with engine.micro_batch(last): out = engine.forward(batch); engine.backward(out.loss)`,
then `engine.step()`. Each engine scales the loss by 1 / accum itself.

  ddp         torch DDP (or a bare module in one process); torch.autocast + OptimizerStep; torch.save files.
  deepspeed   deepspeed.initialize with the folder's ZeRO JSON ("auto" fields filled from the config),
              a torch AdamW passed in (no fused_adam build); save_checkpoint / load_checkpoint.
  accelerate  Accelerator (FSDP when `accelerate launch --config_file fsdp.yaml` asks for it on GPUs);
              accumulate / backward / clip_grad_norm_ / save_state / load_state / get_state_dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tempnet.distributed import init_from_env, is_main_process, world_size_and_rank
from tempnet.errors import UserError
from tempnet.train.checkpoint import load_state, load_weights, save_state, save_weights
from tempnet.train.divergence import scale_of
from tempnet.train.precision import autocast, grad_scaler

__all__ = ["Stepped", "OptimizerStep", "wrap_ddp", "build_engine", "DDPEngine", "DeepSpeedEngine",
           "AccelerateEngine", "fill_deepspeed_config"]


@dataclass
class Stepped:
    """One optimizer of an `OptimizerStep`."""

    optimizer: torch.optim.Optimizer
    scheduler: object = None
    """Stepped after every update (None: the trainer steps its own, e.g. once per epoch)."""
    clip: float = 0.0
    """The largest gradient norm (<= 0: not clipped; the norm is still measured)."""
    params: list | None = None
    """Whose gradients the norm covers, in the order they are summed (default: the optimizer's groups')."""


class OptimizerStep:
    """`backward(loss)` then `step()` for a list of optimizers under one GradScaler (enabled for fp16)."""

    def __init__(self, device: torch.device, precision: str, stepped: list[Stepped]):
        self.scaler, self.stepped, self.skipped = grad_scaler(device, precision), stepped, None

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def zero_grad(self) -> None:
        for s in self.stepped:
            s.optimizer.zero_grad(set_to_none=True)

    def step(self) -> list[torch.Tensor]:
        """Unscale, clip, step optimizers, scaler and schedules; returns each optimizer's
        gradient norm before clipping (device tensors: reading one is the caller's synchronisation).
        `skipped` then tells whether fp16 dropped the update (the scale drops on a skip; None without fp16)."""
        for s in self.stepped:
            self.scaler.unscale_(s.optimizer)
        norms = [_grad_norm(s) for s in self.stepped]
        before = scale_of(self.scaler)
        for s in self.stepped:
            self.scaler.step(s.optimizer)
        self.scaler.update()
        self.skipped = None if before is None else scale_of(self.scaler) < before
        for s in self.stepped:
            if s.scheduler is not None:
                s.scheduler.step()
        return norms


def _grad_norm(s: Stepped) -> torch.Tensor:
    params = s.params if s.params is not None else [p for g in s.optimizer.param_groups for p in g["params"]]
    if s.clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, s.clip).detach()
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).detach()


def wrap_ddp(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel over the process group, or the module itself in one process."""
    if world_size_and_rank()[0] == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def _trainable_state(model: nn.Module, frozen: bool) -> dict:
    """The whole state dict, or in frozen mode only the trainable parameters (the base is reloaded from its path)."""
    if not frozen:
        return model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable}


class DDPEngine:
    """One process, or torchrun with DistributedDataParallel."""

    name = "ddp"

    def __init__(self, cfg, accum: int):
        _, _, local_rank = init_from_env()
        self.device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.accum, self.clip, self.frozen = accum, cfg.optim.grad_clip, cfg.model.mode == "frozen"
        self.precision, self.find_unused = cfg.train.precision, cfg.train.find_unused_parameters

    def prepare(self, model: nn.Module, optimizer, scheduler) -> None:
        self.unwrapped, self.optimizer, self.scheduler = model.to(self.device), optimizer, scheduler
        self.model = wrap_ddp(model, self.device, self.find_unused)
        self.update = OptimizerStep(self.device, self.precision, [Stepped(optimizer, scheduler, self.clip)])
        self.scaler = self.update.scaler

    @property
    def skipped(self) -> torch.Tensor | None:
        return self.update.skipped

    def micro_batch(self, last: bool):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if last or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def forward(self, batch: dict):
        with autocast(self.device, self.precision):
            return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.update.backward(loss / self.accum)

    def step(self) -> torch.Tensor:
        """The OptimizerStep, then zero_grad; returns the gradient norm before clipping."""
        norm = self.update.step()[0]
        self.update.zero_grad()
        return norm

    def save(self, path: Path) -> None:
        if is_main_process():
            save_weights(_trainable_state(self.unwrapped, self.frozen), path / "model.safetensors")
            save_state({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()}, path / "optimizer.pt")

    def load(self, path: Path) -> None:
        state = load_weights(path / "model.safetensors", self.device)
        missing, unexpected = self.unwrapped.load_state_dict(state, strict=False)
        trainable = {n for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        missing = sorted(set(missing) & (trainable if self.frozen else set(self.unwrapped.state_dict())))
        if unexpected or missing:
            raise UserError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
        other = load_state(path / "optimizer.pt", self.device)
        self.optimizer.load_state_dict(other["optimizer"])
        self.scheduler.load_state_dict(other["scheduler"])
        self.scaler.load_state_dict(other["scaler"])

    def save_pretrained(self, path: Path) -> None:
        if is_main_process():
            self.unwrapped.save_pretrained(path)

    def close(self) -> None:
        pass


def fill_deepspeed_config(path: str | Path, cfg, accum: int, world_size: int) -> dict:
    """Read the DeepSpeed JSON and fill its "auto" fields from the trainer config.

    A concrete value that disagrees with the trainer config is an error (one source of truth);
    an optimizer or scheduler section is an error too (the trainer passes its own).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine.deepspeed_config: no such file {path}")
    ds = json.loads(path.read_text())
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"{path}: remove the {section!r} section; the trainer passes torch AdamW and its cosine "
                             "schedule (optim.* in the YAML)")
    wanted = {"train_micro_batch_size_per_gpu": cfg.train.micro_batch_size, "gradient_accumulation_steps": accum,
              "train_batch_size": cfg.train.micro_batch_size * accum * world_size,
              "gradient_clipping": cfg.optim.grad_clip}
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f"{path}: {key}={ds[key]} disagrees with the trainer config ({value}); set it to \"auto\"")
    for key, on in (("fp16", cfg.train.precision == "fp16"), ("bf16", cfg.train.precision == "bf16")):
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = on
        elif bool(section["enabled"]) != on:
            raise ValueError(f"{path}: {key}.enabled={section['enabled']} disagrees with train.precision="
                             f"{cfg.train.precision}; set it to \"auto\"")
    return ds


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1/2/3 under the `deepspeed` launcher or torchrun."""

    name = "deepspeed"

    def __init__(self, cfg, accum: int):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        world, _, _ = init_from_env(require_group=True)  # gloo on CPU
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed asserts it is set, also in one plain process
        # DeepSpeed's comm layer adopts that group now: zero.Init (ZeRO-3 from_pretrained) reads its world size.
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        self.config = fill_deepspeed_config(cfg.engine.deepspeed_config, cfg, accum, world)
        self.stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        self.frozen = cfg.model.mode == "frozen"
        self.device = torch.device(get_accelerator().current_device_name())
        self._hf_zero3 = None
        if self.stage == 3:
            # Must exist while the model is built: from_pretrained then loads straight into ZeRO-3 partitions.
            from transformers.integrations import HfDeepSpeedConfig

            self.config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
            self._hf_zero3 = HfDeepSpeedConfig(self.config)

    def prepare(self, model: nn.Module, optimizer, scheduler) -> None:
        import deepspeed

        self.unwrapped, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.model, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=self.config)
        self._skipped, self.skipped = 0, None

    def micro_batch(self, last: bool):
        return contextlib.nullcontext()  # DeepSpeed counts micro-batches itself

    def forward(self, batch: dict):
        return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # scales by 1 / gradient_accumulation_steps
        self.model.step()  # a no-op except at the accumulation boundary

    def step(self) -> float | None:
        norm = self.model.get_global_grad_norm()
        skipped = int(getattr(self.model, "skipped_steps", 0))  # fp16 overflow steps (a host counter)
        self.skipped = torch.tensor(skipped > self._skipped) if self.model.fp16_enabled() else None
        self._skipped = skipped
        return None if norm is None else float(norm)

    def save(self, path: Path) -> None:
        self.model.save_checkpoint(str(path.parent), tag=path.name, save_latest=False,
                                   exclude_frozen_parameters=self.frozen)

    def load(self, path: Path) -> None:
        loaded, _ = self.model.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=not self.frozen)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {path}")

    def save_pretrained(self, path: Path) -> None:
        state = self.model._zero3_consolidated_16bit_state_dict() if self.stage == 3 else None  # all ranks gather
        if is_main_process():
            self.unwrapped.save_pretrained(path, state_dict=state)

    def close(self) -> None:
        pass


class AccelerateEngine:
    """Hugging Face accelerate; FSDP when the launch config asks for it and the backend supports it."""

    name = "accelerate"

    def __init__(self, cfg, accum: int):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        precision = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[cfg.train.precision]
        # cpu=True on a CPU-only machine: otherwise accelerate silently runs each process on its own.
        self.acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision=precision,
                               cpu=not torch.cuda.is_available())
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
                and self.acc.distributed_type != DistributedType.FSDP:
            warnings.warn(f"the accelerate config asks for FSDP but accelerate runs {self.acc.distributed_type}: it "
                          "enables FSDP only on GPU-like backends (accelerate/state.py), so this CPU run is plain data "
                          "parallel", stacklevel=2)
        self.device, self.clip, self.skipped = self.acc.device, cfg.optim.grad_clip, None

    def prepare(self, model: nn.Module, optimizer, scheduler) -> None:
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        # Stepped by us once per optimizer step (accelerate would step it num_processes times); saved by save_state.
        self.scheduler = scheduler
        self.acc.register_for_checkpointing(scheduler)
        self.unwrapped = self.acc.unwrap_model(self.model)

    def micro_batch(self, last: bool):
        return self.acc.accumulate(self.model)

    def forward(self, batch: dict):
        return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)  # scales by 1 / gradient_accumulation_steps

    def step(self) -> float | None:
        if not self.acc.sync_gradients:
            raise RuntimeError("accelerate is not at an accumulation boundary: micro-batches and "
                               "gradient_accumulation_steps disagree")
        norm = self.acc.clip_grad_norm_(self.model.parameters(), self.clip if self.clip > 0 else float("inf"))
        self.optimizer.step()
        self.skipped = torch.tensor(self.acc.optimizer_step_was_skipped) if self.acc.scaler is not None else None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return None if norm is None else float(norm)

    def save(self, path: Path) -> None:
        self.acc.save_state(str(path))

    def load(self, path: Path) -> None:
        self.acc.load_state(str(path))

    def save_pretrained(self, path: Path) -> None:
        state = self.acc.get_state_dict(self.model)
        self.acc.unwrap_model(self.model).save_pretrained(path, state_dict=state, is_main_process=self.acc.is_main_process,
                                                          save_function=self.acc.save)

    def close(self) -> None:
        self.acc.end_training()


_ENGINES = {"ddp": DDPEngine, "deepspeed": DeepSpeedEngine, "accelerate": AccelerateEngine}


def build_engine(cfg) -> DDPEngine | DeepSpeedEngine | AccelerateEngine:
    """The engine named by cfg.engine.name, joined to the launcher's process group.

    The launchers (torchrun, deepspeed, accelerate launch) all export WORLD_SIZE, which fixes the
    accumulation steps: global_batch_size / (micro_batch_size x world size).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    engine = _ENGINES[cfg.engine.name](cfg, cfg.train.accumulation_steps(world))
    if world_size_and_rank()[0] != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the {engine.name} engine joined a group of "
                           f"{world_size_and_rank()[0]} processes")
    engine.accum = cfg.train.accumulation_steps(world)
    return engine
