"""The `method:` section of a configuration: the chosen method's own config dataclass (from the
registry, `name` first, then that method's keys only), as a run's config.yaml holds it.

The method keys a user gives (a file, the flags, `--set`) are also kept apart (`Config.method_keys`),
so that a change of method (`set_method`: `--method` after a `--config`, experiment's per-method
copies) builds the new method's section from its defaults and the given keys it has: what was set
explicitly carries over, nothing else. `method.KEY` is a key of whichever method runs;
`method.METHOD.KEY` (a file's per-method section, e.g. configs/default.yaml) of METHOD only.

A given key that the method(s) a configuration serves do not have (`settle`): from the command
line, a one-line error naming the method, its keys and the methods that have it; from a file, it
is dropped: silently at its default (a config.yaml from before per-method sections lists every
method's keys at their defaults), with a warning otherwise. Not an error: such a value never
reached the run (a method reads its own keys only), so dropping it reproduces what the run did,
and the runs of an experiment with `--set method.n_tokens=4` saved that key in their LoRA run too.
"""

from __future__ import annotations

import functools
import json
import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Literal, Protocol

from sumtune.config_values import coerce, describe, from_text
from sumtune.errors import UserError
from sumtune.methods import CONFIGS
from sumtune.methods.config_base import HELP, MethodConfigBase

log = logging.getLogger(__name__)
METHODS = tuple(CONFIGS)


@dataclass(frozen=True)
class Given:
    """A method key's value as given, typed when a method's section takes it (two methods may type
    a key of the same name differently)."""

    value: Any
    text: bool  # a command-line string (--set): read as `from_text` reads it
    source: str | None  # the file it came from; None: the command line


class WithMethod(Protocol):
    """What these functions use of a `sumtune.config.Config` (not imported: config imports this module)."""

    method: MethodConfigBase
    method_keys: dict[str, Given]


@functools.cache
def keys_of(name: str) -> dict[str, Field]:
    """The keys of method `name` (its config's fields but `name`), in declaration order."""
    return {f.name: f for f in fields(CONFIGS[name]) if f.name != "name"}


def _typed(key: str, given: Given, hint: Any) -> Any:
    return coerce(f"method.{key}", from_text(f"method.{key}", given.value, hint) if given.text else given.value, hint)


def new_section(name: str, given: Mapping[str, Given] | None = None) -> MethodConfigBase:
    """Method `name`'s section: its defaults, then the `given` keys it has, in the order given."""
    cls = CONFIGS[name]
    section, hints = cls(name=name), typing.get_type_hints(cls)
    for key, value in (given or {}).items():
        scope, _, k = key.rpartition(".")
        if k in keys_of(name) and scope in ("", name):
            setattr(section, k, _typed(key, value, hints[k]))
    return section


def set_method(cfg: WithMethod, name: str) -> None:
    """Make `name` the configuration's method: its section rebuilt from its defaults and the given keys."""
    cfg.method = new_section(name, cfg.method_keys)


def set_method_key(cfg: WithMethod, key: str, value: Any, text: bool = False, source: str | None = None) -> None:
    """Set `method.<key>` (`name`, a method key, or `METHOD.KEY`): recorded as given, and applied to
    the section now when the chosen method has it."""
    if key == "name":
        set_method(cfg, coerce("method.name", from_text("method.name", value, Literal[METHODS]) if text else value,
                               Literal[METHODS]))
        return
    scope, _, k = key.rpartition(".")
    if not scope and k in CONFIGS:  # a method's own section, e.g. `lora:` in a file
        if value is None:
            return
        raise UserError(f"config key 'method.{k}' is a section; set one of its keys, e.g. 'method.{k}.<key>'")
    if scope and scope not in CONFIGS:
        raise UserError(f"unknown config key 'method.{key}': {scope!r} is no method (methods: {', '.join(METHODS)})")
    if scope and k not in keys_of(scope):
        raise UserError(f"config key 'method.{key}': {_keys_line(scope, k)}")
    if not scope and not any(k in keys_of(m) for m in METHODS):
        raise UserError(f"unknown config key 'method.{key}': no method has it (method {cfg.method.name}'s keys: "
                        f"{', '.join(keys_of(cfg.method.name)) or 'none'}; `sumtune methods` lists every method's)")
    cfg.method_keys.pop(key, None)  # a later setting goes after the earlier ones: it wins
    cfg.method_keys[key] = given = Given(value, text, source)
    if k in keys_of(cfg.method.name) and scope in ("", cfg.method.name):
        setattr(cfg.method, k, _typed(key, given, typing.get_type_hints(type(cfg.method))[k]))


def _keys_line(name: str, key: str) -> str:
    return f"method {name} has no key {key!r} (its keys: {', '.join(keys_of(name)) or 'none'})"


def _not_here(key: str, methods: Sequence[str]) -> str:
    owners = [m for m in METHODS if key in keys_of(m)]
    head = (_keys_line(methods[0], key) if len(methods) == 1
            else f"none of the methods {', '.join(methods)} has key {key!r}")
    return f"{head}; {', '.join(owners)} {'has' if len(owners) == 1 else 'have'} it"


def _at_default(key: str, given: Given) -> bool:
    """Whether `given` is the default of a method declaring `key` (as an old flat section lists it)."""
    for m in METHODS:
        f = keys_of(m).get(key)
        if f is None:
            continue
        try:
            value = _typed(key, given, typing.get_type_hints(CONFIGS[m])[key])
        except UserError:
            continue
        if value == (f.default_factory() if f.default_factory is not MISSING else f.default):
            return True
    return False


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def settle(cfg: WithMethod, methods: Sequence[str]) -> None:
    """Refuse (the command line) or drop (a file: see the module docstring) each given method key
    that none of `methods`, the methods this configuration serves, has."""
    for key, given in list(cfg.method_keys.items()):
        if "." in key or any(key in keys_of(m) for m in methods):
            continue
        if given.source is None:
            raise UserError(f"config key 'method.{key}': {_not_here(key, methods)}")
        if not _at_default(key, given):
            _warn_once(f"{given.source}: method.{key}={given.value!r} ignored: {_not_here(key, methods)}")
        del cfg.method_keys[key]


def check_sections(cfg: WithMethod, methods: Sequence[str]) -> None:
    """Each of `methods`' sections as `cfg` builds it: the valid ranges of its keys and its own check."""
    for m in methods:
        section = cfg.method if m == cfg.method.name else new_section(m, cfg.method_keys)
        for key, (ok, desc) in section.RANGES.items():
            if not ok(value := getattr(section, key)):
                raise UserError(f"config key 'method.{key}': got {value!r}, expected {desc}")
        section.check()


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(cls.__name__ + "(") else doc.splitlines()[0]  # the dataclass's generated one: none


def listing(names: Sequence[str] = ()) -> str:
    """`sumtune methods`: each method (all registered, or `names`) with its keys, defaults, help and types."""
    lines = []
    for name in names or METHODS:
        cls = CONFIGS[name]
        hints, keys = typing.get_type_hints(cls), keys_of(name)
        lines.append(f"{name}: {_summary(cls)}".rstrip(": "))
        shown = {k: f"method.{k} = {json.dumps(f.default_factory() if f.default_factory is not MISSING else f.default)}"
                 for k, f in keys.items()}
        width = max(map(len, shown.values()), default=0)
        lines += [f"  {shown[k].ljust(width)}  {f.metadata.get(HELP, '')} ({describe(hints[k])})" for k, f in keys.items()]
        lines += [] if keys else ["  (no keys)"]
    return "\n".join(lines)
