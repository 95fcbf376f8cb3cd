"""Cheap checks of what a run is given, before it starts: keyword arguments handed to another library,
files that must exist.

Hugging Face configs take any keyword (an unknown one becomes a silent attribute: `n_layers=1` for
GPT-2 trains the default 12 layers), so `model.base` / `config_overrides` keys are compared with the
config class's own parameters. timm and open_clip refuse an unknown keyword with a TypeError from the
model class deep inside; `create_checked` turns that into one error naming the config key and the
nearest valid one.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Iterable, Mapping

from tempnet.errors import UserError, unknown_keys

__all__ = ["hf_config_keys", "check_hf_config_keys", "create_checked", "init_parameters", "load_pretrained"]


def init_parameters(fn: Callable) -> set[str]:
    """The named parameters of a function or class constructor (no self, *args, **kwargs)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    return {name for name, p in inspect.signature(target).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


#: Keys transformers still accepts and converts: the RoPE settings (into rope_parameters), torch_dtype (dtype).
_LEGACY_HF_KEYS = {"rope_parameters": {"rope_theta", "rope_scaling", "partial_rotary_factor"}, "dtype": {"torch_dtype"}}


def hf_config_keys(config_cls) -> set[str]:
    """Every key a Hugging Face config class knows: the __init__ parameters of it and its bases, its
    default to_dict() keys, its attribute_map aliases (GPT-2's `hidden_size` for `n_embd`) and the
    legacy keys transformers converts (`rope_theta`)."""
    keys = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    for cls in config_cls.__mro__:
        if "__init__" in vars(cls) and cls is not object:
            keys |= init_parameters(cls)
    return keys | {old for new, olds in _LEGACY_HF_KEYS.items() if new in keys for old in olds}


def check_hf_config_keys(config_cls, given: Mapping[str, Any], where: str) -> None:
    """A ConfigError for the first key of `given` that `config_cls` does not know, with the nearest one."""
    unknown_keys(given, hf_config_keys(config_cls), where, config_cls.__name__)


_UNEXPECTED = re.compile(r"^(?P<owner>\S+)\(\) got an unexpected keyword argument '(?P<key>\w+)'")


def create_checked(create: Callable, kwargs: Mapping[str, Any], where: str, library: str,
                   valid: Callable[[str], Iterable[str]], *args, **fixed):
    """`create(*args, **fixed, **kwargs)`; a TypeError about one of the user's `kwargs` becomes a
    ConfigError naming `where.KEY` and the nearest of `valid(owner)` (owner: the refusing class, e.g. "ResNet").
    Any other TypeError is a bug and propagates."""
    try:
        return create(*args, **fixed, **kwargs)
    except TypeError as exc:
        match = _UNEXPECTED.match(str(exc))
        if not match or match["key"] not in kwargs:
            raise
        owner = match["owner"].removesuffix(".__init__").rsplit(".", 1)[-1]
        unknown_keys([match["key"]], valid(owner), where, f"{library}'s {owner}")


def load_pretrained(load: Callable, name: str, field: str, **kwargs):
    """`load(name, **kwargs)` (a `from_pretrained`); an OSError (not on the Hub and not cached, no network,
    a directory without the model's files) is a UserError naming the config field."""
    try:
        return load(name, **kwargs)
    except OSError as exc:
        raise UserError(f"{field}={name}: cannot load it: {str(exc).splitlines()[0]}") from None
