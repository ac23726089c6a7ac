"""Full fine-tuning has no options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class FullConfig(MethodConfigBase):
    pass
