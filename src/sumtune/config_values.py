"""Typed values for the configuration: YAML files and `--set key=value` text turned into
each field's type (bool, int, float, str, a Literal choice, a list of strings), or a one-line
error naming the key and what it expects."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from sumtune.errors import UserError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


NULL = ("null", "none", "~", "")


def _optional(hint: Any) -> Any:
    """X for a field typed `X | None`, else None."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


def describe(hint: Any) -> str:
    """What a field of type `hint` accepts, for error messages."""
    if (inner := _optional(hint)) is not None:
        return f"{describe(inner)} or null"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return "a comma-separated list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise ValueError(value)


def _integer(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(value)


def _scalar(value: Any, hint: Any) -> Any:
    """bool / int / float / str from a YAML or text value; ValueError when it is none of them."""
    if hint is bool:
        return _boolean(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)  # true is not 1, and a list is no number
    if hint is int:
        return _integer(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    raise ValueError(value)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or fail naming the key."""
    bad = UserError(f"config key '{key}': got {value!r}, expected {describe(hint)}")
    if (inner := _optional(hint)) is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in NULL):
            return None
        try:
            return coerce(key, value, inner)
        except UserError:
            raise bad from None
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise bad
        return value
    if origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad
    try:
        return _scalar(value, hint)
    except ValueError:
        raise bad from None


def from_text(key: str, text: str, hint: Any) -> Any:
    """A `--set` value as written, except a quoted string or a [list], which are read as YAML."""
    t = text.strip()
    quoted = hint is str and len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'"
    if quoted or (typing.get_origin(hint) is list and t.startswith("[")):
        try:
            return yaml.safe_load(t)
        except yaml.YAMLError:
            raise UserError(f"config key '{key}': cannot parse {text!r}; expected {describe(hint)}") from None
    return text if hint is str else t


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of sections (model, data, method, train, eval)")
    return data


def parse_set(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UserError(f"--set expects key=value (e.g. train.lr=1e-4), got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value
