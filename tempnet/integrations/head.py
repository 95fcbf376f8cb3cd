"""The temperature head of a causal LM: its settings, and its weights inside checkpoints.

`TempNetConfig` holds what a checkpoint needs to rebuild the head (the objective's name and its
`TempNetSettings`: rho, tau range, hidden size, dropout); the HF wrappers store it under "tempnet" in
config.json. `TempNetConfig.build` parses it into the core's `Objective` (tempnet.losses.objectives), which
builds the head and computes the loss; nothing here does.

The authors' released checkpoints (LLM-Opt/TempNet-LLaMA2-Chat-*) are plain LLaMA checkpoints whose
state dict also holds fp16 `tempnet.*` weights, with no TempNet settings in config.json, a tau range
of [0.01, 1.2] fixed in their code (the parameter names and shapes are the core TempNet's).
`RELEASED_TEMPNET` covers that layout; their Megatron export stores `scaler` 0-dim (shape []), which
`released_shapes` / `released_state` / `load_head_tensors` read as the core's [1]. Export files
(`save_tempnet_file`) hold one head alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from tempnet.losses.objectives import Objective, TempNetSettings, objective_class

__all__ = [
    "TempNetSettings", "TempNetConfig", "RELEASED_TEMPNET", "DTYPES", "PREFIX", "DOWNLOAD_KEYS", "build_head", "head_shapes",
    "resolve_settings", "check_head_shapes", "checkpoint_shapes", "read_checkpoint_tensors", "save_tempnet_file",
    "load_tempnet_file", "TempNetFile", "SCALAR_KEYS", "released_shapes", "released_state", "zero_dim_keys",
    "load_head_tensors", "fits_vocab", "quiet_loading_report", "check_base_loaded",
]

#: Where the head's parameters live inside a causal LM's state dict.
PREFIX = "tempnet."
#: Weight dtypes by the names configs and command lines use.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: from_pretrained kwargs that say where a checkpoint's files are (local dir or hub repo).
DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


@dataclass
class TempNetConfig(TempNetSettings):
    """Settings of the temperature head stored in a checkpoint: the numbers plus the objective."""

    objective: str = "tempnet_dro"
    """"tempnet_dro" (paper), "tempnet_ce", "dro" (one learned global tau) or "ce" (fixed tau)."""

    def __post_init__(self):
        objective_class(self.objective)  # a ValueError naming the objectives
        super().__post_init__()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TempNetConfig":
        """Build from a dict; unknown keys are an error that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TempNet setting(s) {unknown}; valid ones: {sorted(names)}")
        return cls(**data)

    def replace(self, **overrides) -> "TempNetConfig":
        return TempNetConfig.from_dict({**self.to_dict(), **overrides})

    def build(self, vocab_size: int) -> Objective:
        """The core objective for a vocabulary of this size (its head, robust flag and resolved rho)."""
        return objective_class(self.objective)(self, vocab_size)


#: Settings assumed for a checkpoint that holds TempNet weights but no "tempnet" entry in config.json:
#: the authors' released LLaMA2-Chat TempNets (tau range [0.01, 1.2]; rho 8.5 as in the LLaMA-2 setting).
RELEASED_TEMPNET = TempNetConfig(objective="tempnet_dro", rho=8.5, tau_min=0.01, tau_max=1.2, hidden_size=256)


def build_head(cfg: TempNetConfig, vocab_size: int) -> nn.Module:
    """A fresh temperature head of `cfg.build(vocab_size)`."""
    return cfg.build(vocab_size).build_head()


def fits_vocab(head: nn.Module, vocab_size: int) -> bool:
    """Whether `head` reads logits of this vocabulary size (a head built for none, e.g. one global tau, fits any)."""
    return getattr(head, "vocab_size", vocab_size) == vocab_size


def head_shapes(cfg: TempNetConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the head (keys without prefix), built on the meta device (no memory)."""
    with torch.device("meta"):
        head = build_head(cfg, vocab_size)
    return {k: tuple(v.shape) for k, v in head.state_dict().items()}


def resolve_settings(stored: dict | None, found: dict[str, tuple], overrides: dict[str, Any]) -> TempNetConfig:
    """Stored settings, or (no "tempnet" in config.json) ones inferred from the weights, then overrides."""
    if stored:
        base = TempNetConfig.from_dict(stored)
    elif "proj.0.weight" in found:  # a TempNet without settings: the authors' released layout
        base = RELEASED_TEMPNET.replace(hidden_size=found["proj.0.weight"][0])
    elif "logit" in found:
        base = TempNetConfig(objective="dro")
    else:
        base = TempNetConfig()
    return base.replace(**overrides) if overrides else base


#: Head parameters that the authors' Megatron export stores 0-dim (shape []) and the core TempNet holds as [1].
SCALAR_KEYS = ("scaler",)


def released_shapes(shapes: Mapping[str, tuple]) -> dict[str, tuple]:
    """Head shapes (keys without prefix) with the 0-dim `SCALAR_KEYS` of the released export read as (1,)."""
    return {k: ((1,) if k in SCALAR_KEYS and tuple(v) == () else tuple(v)) for k, v in shapes.items()}


def released_state(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A head state dict with every 0-dim `prefix + SCALAR_KEYS` tensor reshaped to [1] (the core's shape)."""
    names = {prefix + k for k in SCALAR_KEYS}
    return {k: (v.reshape(1) if k in names and v.dim() == 0 else v) for k, v in state.items()}


def zero_dim_keys(found: Mapping[str, tuple]) -> list[str]:
    """The `SCALAR_KEYS` that a checkpoint's head (shapes, keys without prefix) stores 0-dim."""
    return [k for k in SCALAR_KEYS if k in found and tuple(found[k]) == ()]


def load_head_tensors(head: nn.Module, path, keys: list[str], **download_kwargs) -> None:
    """Copy the checkpoint's `PREFIX + key` tensors (0-dim ones reshaped to [1]) into `head`'s parameters."""
    stored = released_state({k[len(PREFIX):]: v for k, v in read_checkpoint_tensors(path, **download_kwargs).items()})
    with torch.no_grad():
        for key in keys:
            param = head.get_parameter(key)
            param.copy_(stored[key].to(param.device, param.dtype))


def check_head_shapes(path, found: dict[str, tuple], expected: dict[str, tuple], settings: TempNetConfig, vocab: int):
    """Raise a ValueError naming the problem when the checkpoint's head does not fit `settings`."""
    hint = "pass fresh_tempnet=True to start a new TempNet"
    if expected and not found:
        raise ValueError(f"checkpoint {path} holds no {PREFIX}* weights for objective {settings.objective!r} "
                         f"(a plain base model?); {hint}")
    if "proj.0.weight" in found and found["proj.0.weight"][1] != vocab:
        raise ValueError(f"the TempNet in {path} was built for vocabulary size {found['proj.0.weight'][1]} but the "
                         f"model's vocabulary size is {vocab}; {hint}")
    found = released_shapes(found)
    for key in sorted(set(expected) | set(found)):
        have, want = found.get(key), expected.get(key)
        if have != want:
            raise ValueError(f"{PREFIX}{key} in {path} has shape {have} but objective {settings.objective!r} with "
                             f"hidden_size={settings.hidden_size} expects {want}; fix the settings or {hint}")


@contextmanager
def quiet_loading_report():
    """Silence transformers' load report while the head's expected shape mismatches are ignored."""
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        yield
    finally:
        report.setLevel(level)


def check_base_loaded(path, info: dict) -> None:
    """After a load that ignored size mismatches: raise on any outside the head, warn on missing/unexpected."""
    keys = [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]
    others = sorted(k for k in keys if not k.startswith(PREFIX))
    if others:
        raise ValueError(f"weights in {path} do not fit the model (size mismatch): {others}")
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(PREFIX))
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(PREFIX))
    if missing or unexpected:
        logging.getLogger(__name__).warning("loading %s: missing keys %s, unexpected keys %s", path, missing, unexpected)


# ---- reading checkpoints without loading the model -------------------------------------------------

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def _resolve(path: str | os.PathLike, filename: str, **download_kwargs) -> str | None:
    """Local file path of `filename` in a checkpoint dir or hub repo, or None if it does not exist."""
    local = Path(path) / download_kwargs.get("subfolder", "") / filename
    if Path(path).is_dir():
        return str(local) if local.is_file() else None
    from transformers.utils import cached_file

    return cached_file(str(path), filename, _raise_exceptions_for_missing_entries=False, **download_kwargs)


def _weight_files(path, prefix: str, **download_kwargs) -> list[str]:
    """The weight files of a checkpoint that may hold keys starting with `prefix`."""
    for index in _INDEXES:
        found = _resolve(path, index, **download_kwargs)
        if found:
            weight_map = json.loads(Path(found).read_text())["weight_map"]
            shards = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
            return [_resolve(path, s, **download_kwargs) for s in shards]
    for single in _SINGLE:
        found = _resolve(path, single, **download_kwargs)
        if found:
            return [found]
    raise FileNotFoundError(f"no model weights (model.safetensors, pytorch_model.bin or a sharded index) in {path}")


def _iter_tensors(file: str, prefix: str, load: bool):
    """(key, shape or tensor) for every key of `file` starting with `prefix`."""
    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    yield key, (f.get_tensor(key) if load else tuple(f.get_slice(key).get_shape()))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        for key, value in state.items():
            if key.startswith(prefix):
                yield key, (value.clone() if load else tuple(value.shape))


def checkpoint_shapes(path, prefix: str = PREFIX, **download_kwargs) -> dict[str, tuple[int, ...]]:
    """Shapes of the checkpoint's tensors whose names start with `prefix`, read from file headers."""
    return {k: v for f in _weight_files(path, prefix, **download_kwargs) for k, v in _iter_tensors(f, prefix, False)}


def read_checkpoint_tensors(path, prefix: str = PREFIX, **download_kwargs) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with `prefix` (only those are read)."""
    return {k: v for f in _weight_files(path, prefix, **download_kwargs) for k, v in _iter_tensors(f, prefix, True)}


# ---- a head alone in one small safetensors file ----------------------------------------------------

def save_tempnet_file(head: nn.Module, cfg: TempNetConfig, vocab_size: int, file: str | os.PathLike,
                      dtype: torch.dtype | None = None) -> None:
    """Write the head's weights (keys without prefix) and its settings (as metadata) to `file`."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in head.state_dict().items()}
    meta = {"format": "pt", "tempnet_config": json.dumps(cfg.to_dict()), "vocab_size": str(vocab_size)}
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(file), metadata=meta)


class TempNetFile(NamedTuple):
    """What `load_tempnet_file` returns."""

    head: nn.Module
    config: TempNetConfig
    vocab_size: int


def load_tempnet_file(file: str | os.PathLike, device: str | torch.device = "cpu") -> TempNetFile:
    """Read a file written by `save_tempnet_file`: the head (eval mode, float32, on `device`), its
    settings and the vocabulary size it was built for."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "tempnet_config" not in meta or "vocab_size" not in meta:
        raise ValueError(f"{file} is not a TempNet export: its metadata lacks 'tempnet_config' and 'vocab_size'")
    cfg, vocab = TempNetConfig.from_dict(json.loads(meta["tempnet_config"])), int(meta["vocab_size"])
    head = build_head(cfg, vocab)
    head.load_state_dict(state)
    return TempNetFile(head.to(device).eval(), cfg, vocab)
