"""Zero-shot has no options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class ZeroShotConfig(MethodConfigBase):
    """Zero-shot: the base model as it is, nothing trains."""
