"""Typed configs: dataclasses that round-trip through JSON/YAML and take ``key=value`` overrides.

Every method's hyperparameters live in a dataclass so that a checkpoint's ``config.json`` rebuilds the
exact model, ablations are config switches, and a typo in an option name is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from zsad.errors import ConfigError

T = TypeVar("T")
_NONE = {"none", "null", "~", ""}


def check_range(name: str, value: float | int | None, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """A one-line error naming the field, its value and the valid range when ``value`` falls outside it."""
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{name} must be in {span}, got {value}")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as ``annotation``; text typed on the command line is read the way the field's type says
    (so ``feature_cache=off`` stays the word "off" for a text field, and means False for a flag)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return yaml.safe_load(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args and isinstance(value, str):
            value = yaml.safe_load(value)
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        elif isinstance(value, (int, float, bool)):
            value = [value]  # `--set scales=1` means the one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("{") else dict(_pair(v, where) for v in text.split(",")
                                                                             if v.strip())
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping such as key:value,key:value, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(str(k), key_type, where): _coerce(v, value_type, where) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
            return value.lower() in {"true", "1", "yes", "on"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    return value


def _pair(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise ConfigError(f"{where}: {text.strip()!r} is not of the form key:value")
    return key.strip(), value.strip()


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and ill-typed values are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{cls.__name__}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def with_overrides(config: T, overrides: list[str] | dict[str, Any]) -> T:
    """A copy of ``config`` with ``key=value`` (or ``a.b=value`` for nested configs) overrides applied."""
    data = to_dict(config)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for key, value in items:
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown option {key!r} for {type(config).__name__}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown option {key!r} for {type(config).__name__}; known: {', '.join(sorted(node))}")
        node[leaf] = value  # text is interpreted by the field's type in from_dict
    return from_dict(type(config), data)


def parse_override(override: str) -> tuple[str, str]:
    """``key=value`` as ``(key, value)``; anything else is a one-line error."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    return key.strip(), value.strip()


def load_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML mapping from disk."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid JSON/YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
