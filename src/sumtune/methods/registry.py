"""Where methods register themselves: each method's package `__init__.py` calls `register` once, with
its name, its config dataclass (torch-free) and where its `Method` class lives (imported on first
use: the methods need torch, their configs do not). Nothing outside `methods/` names a method:
what the trainer, the FLOP count, the plan and the report need comes from the method object."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Registration:
    name: str
    config_class: type
    implementation: str  # "module:Class" of its Method
    order: int  # where the CLI lists it (lower first)


REGISTERED: dict[str, Registration] = {}


def register(name: str, config_class: type, implementation: str, order: int = 1000) -> None:
    """Declare a method (called from its package's `__init__.py`); a second registration of a name
    by another implementation is a programming error."""
    entry = Registration(name, config_class, implementation, order)
    if REGISTERED.get(name, entry) != entry:
        raise ValueError(f"method {name!r} is registered twice ({REGISTERED[name].implementation}, {implementation})")
    REGISTERED[name] = entry
