"""Dataclass configs: defaults < YAML file < `key.sub=value` command-line overrides.

Each experiment defines one tree of dataclasses (a docstring under each field, checks in
`__post_init__`); `load_config` merges the three layers, then builds the tree so every
`__post_init__` sees the final values. Unknown keys are errors that list the valid ones; a key an older
version used gives one error naming its new name (the root class's `RENAMED`: {"old.key": "new.key"}).
A loaded config is never changed: `derive` makes a new one (e.g. with the paths a run generated), and
`with_defaults` gives a tree its own defaults for fields defined once in a shared class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from tempnet.errors import ConfigError

__all__ = ["load_config", "config_to_dict", "save_config", "parse_overrides", "config_diff", "derive",
           "with_defaults"]

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of a dataclass tree."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (rank 0 only: the caller decides)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def parse_overrides(overrides: Sequence[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a field below a scalar")
        try:
            node[leaf] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override {key.strip()}: its value {raw!r} is not valid YAML ({problem}); quote it "
                              f"to pass a string, e.g. {key.strip()}='\"{raw}\"'") from None
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for Optional[T], else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", str(tp))
    return {"int": "an integer", "float": "a number", "bool": "a boolean (true/false)", "str": "a string",
            "list": "a list", "tuple": "a list", "dict": "a mapping"}.get(name, f"a {name}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """`value` as the declared type `tp` of field `where`, or a ConfigError naming field, type and value."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key {where} needs {_type_name(tp)}, got null")
    origin = typing.get_origin(tp) or tp
    bad = ConfigError(f"config key {where} needs {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section {where} must be a mapping, got {value!r}")
        return _build(tp, value, f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin in (list, tuple):
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if origin is list and isinstance(value, str):  # a single path where a list is expected
                value = [value]
            else:
                raise bad
        args = typing.get_args(tp)
        item_tp = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    return value


def _build(cls: type[T], data: dict, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or '<root>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; "
                          f"valid keys here: {sorted(fields)}")
    kwargs = {name: _convert(value, hints[name], f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a __post_init__ check: the value came from the user
        raise ConfigError(str(exc)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, then the YAML file at `path`, then `overrides` ("a.b=1").

    Every value is converted to its field's declared type (int, float, bool, str, list, tuple, dict,
    Optional, nested sections); a value that does not fit raises a ConfigError naming the field, the
    type and the value. Unknown keys list the valid ones.
    """
    data = config_to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}: "
                              f"{getattr(exc, 'problem', None) or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides))
    _refuse_renamed(data, getattr(cls, "RENAMED", {}))
    return _build(cls, data, "")


def _refuse_renamed(data: dict, renamed: dict[str, str]) -> None:
    """A ConfigError for the first key of `data` (dotted) that `renamed` maps to its new name."""
    for old, new in renamed.items():
        node = data
        for part in old.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            raise ConfigError(f"config key {old} was renamed to {new}")


def derive(cfg: T, changes: dict[str, dict]) -> T:
    """A new config tree: `cfg` with `changes` ({"section": {"field": value}}) applied, every `__post_init__`
    run again. `cfg` itself is left as it was loaded (a trainer derives the paths it generates this way)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)
                                       for section, values in changes.items()})


def with_defaults(cls: type[T], **defaults) -> type[T]:
    """A dataclass subclass of `cls` whose named fields default to `defaults`; their type, docstring and
    checks stay `cls`'s. Subclass it to give one config tree its own defaults for fields both trees share."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    body = {"__annotations__": {name: hints[name] for name in defaults}, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__, "__doc__": cls.__doc__, **defaults}
    return dataclasses.dataclass(type(cls.__name__, (cls,), body))


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of every field whose value differs between two `config_to_dict` trees."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{name}.")
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append(name)
    return out
