"""The fine-tuning methods, one package each, as PEFT's tuners: `<name>/config.py` declares the
method's keys (a dataclass, torch-free), `<name>/method.py` the `Method` (base.py) that prepares,
saves and loads it, and `<name>/__init__.py` registers the two under the method's name
(`registry.register`).

Adding a method: its package, found here by itself (every sub-package of `sumtune.methods` is
imported), and a README row; a method that lives outside sumtune is its own importable package that
calls `register`, named in $SUMTUNE_METHODS (comma-separated modules). `sumtune.config` builds the
`method:` section of every run's config from CONFIGS, so a new key is declared once, in the
method's own config; its LR grids (`LR_GRIDS`) reach `sumtune experiment` from there too.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING

from sumtune.errors import UserError
from sumtune.methods.registry import REGISTERED

if TYPE_CHECKING:
    from sumtune.methods.base import Method

PLUGINS_ENV = "SUMTUNE_METHODS"
DEFAULT_METHOD = "lora"  # config.py's method.name default
EXPERIMENT_METHODS = ("zero_shot", "prompt_tuning", "lora", "last_layers")  # experiment's default methods
OPT_IN = {"with_full": "full"}  # experiment flags that add a method (--with-full)


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"${PLUGINS_ENV} names {module!r}, which cannot be imported ({e}); "
                            "fix the module name or PYTHONPATH") from None


_discover()

# name -> the method's config dataclass, in the order the CLI lists the methods
CONFIGS: dict[str, type] = {r.name: r.config_class for r in sorted(REGISTERED.values(), key=lambda r: (r.order, r.name))}


def get_method(name: str) -> Method:
    """The method named `name`, a new instance (its module imported on first use: the methods need
    torch, their configs do not)."""
    entry = REGISTERED.get(name)
    if entry is None:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(CONFIGS)}")
    module, _, cls = entry.implementation.partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["CONFIGS", "DEFAULT_METHOD", "EXPERIMENT_METHODS", "OPT_IN", "get_method"]
