"""Typed configs: YAML -> nested dataclasses, with dotted command-line overrides.

Precedence is `dataclass default < YAML < command line`. Defaults live only in the dataclasses.
Every key is checked: an unknown key is a one-line error naming the closest valid key, and a value of
the wrong type names the key, the value and the expected type.

    cfg = load_config(SFTConfig, "configs/sft.yaml", ["train.learning_rate=1e-4", "model.lora.r=16"])
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config that cannot be used, with a message that says where and what would be valid."""


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value (e.g. train.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        value = _yaml11_float(value)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return tree


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string; everyone means a number."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value) else value


def deep_merge(base: dict, top: dict) -> dict:
    """Return `base` updated by `top`, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build `cls` from its defaults, then the YAML file at `path`, then `overrides`."""
    values = read_yaml(path) if path else {}
    values = deep_merge(values, parse_overrides(overrides or []))
    source = str(path) if path else "command line"
    return from_dict(cls, values, source=source)


def from_dict(cls: type, values: dict, *, source: str = "config", prefix: str = ""):
    """Recursively build dataclass `cls` from a plain dict, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(source, prefix + str(key), key, list(fields), prefix))
        default = _default_of(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A section given in YAML starts from this stage's default for it (e.g. the RM's
            # `model.lora.enabled: true`), not from the section class's own defaults.
            value = deep_merge(dataclasses.asdict(default), value)
        kwargs[key] = _coerce(hints[key], value, source=source, key=prefix + key)
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {err}") from None
    return cfg


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _unknown_key_message(source: str, dotted: str, key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(valid))}"
    return f"{source}: unknown config key '{dotted}' — {hint}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if get_origin(tp) is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _quote_hint(tp: Any, value: Any, key: str) -> str:
    """For text that YAML read as a number (a revision such as 2.0, a name of digits): how to pass it as text."""
    takes_text = tp is str or (get_origin(tp) in (Union, types.UnionType) and str in get_args(tp))
    if takes_text and isinstance(value, (int, float)) and not isinstance(value, bool):
        return (f" (YAML reads {value} as a number: quote it to pass text, \"{value}\" in a file, "
                f"{key}='\"{value}\"' on the command line)")
    return ""


def _coerce(tp: Any, value: Any, *, source: str, key: str) -> Any:
    """Check `value` against type `tp` (converting int->float and dict->dataclass); raise ConfigError if wrong."""
    origin = get_origin(tp)

    def wrong() -> ConfigError:  # built only when raised: a config's every value passes through here
        return ConfigError(f"{source}: config key '{key}' = {value!r} is not of the expected type {_type_name(tp)}"
                           + _quote_hint(tp, value, key))

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source=source, key=key)
            except ConfigError:
                continue
        raise wrong()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(
            f"{source}: config key '{key}' = {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        return from_dict(tp, value, source=source, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        (item_type,) = get_args(tp)
        return [_coerce(item_type, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise wrong()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        value = _yaml11_float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise wrong()


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (what is printed, saved and logged)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def config_hash(cfg: Any, ignore: tuple[str, ...] = ()) -> str:
    """sha256 of the canonical resolved config, leaving out the (dotted) keys in `ignore` and what is under them."""
    data = to_dict(cfg)
    for key in ignore:
        *parents, last = key.split(".")
        section = data
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(last, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def is_under(key: str, keys: tuple[str, ...]) -> bool:
    """Whether dotted `key` is one of `keys` or lies under one of them."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs. Lists of sections of the same length are
    compared entry by entry (`reward.functions[1].weight`)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += diff_configs(a, b, prefix + key + ".")
        elif _sections(a) and _sections(b) and len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b)):
                changed += diff_configs(x, y, f"{prefix}{key}[{index}].")
        elif a != b:
            changed.append(prefix + key)
    return changed


def _sections(value: Any) -> bool:
    """Whether `value` is a list of sections (dicts), e.g. `reward.functions`."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def key_parts(key: str) -> list[str | int]:
    """`"reward.functions[1].weight"` -> `["reward", "functions", 1, "weight"]`."""
    return [int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key)]
