"""IA³'s options."""

from __future__ import annotations

from dataclasses import dataclass, field

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class IA3Config(MethodConfigBase):
    target_modules: list[str] = field(default_factory=list)  # empty = the key/value projections and the MLP down projection
