"""P-tuning's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class PTuningConfig(MethodConfigBase):
    n_tokens: int = 20  # virtual tokens in front of every input
    encoder: Literal["mlp", "lstm"] = "mlp"  # the prompt encoder
    encoder_hidden: int = 0  # the encoder's width; 0 = the model's hidden size

    RANGES = {
        "n_tokens": (lambda v: v >= 1, "an integer >= 1"),
        "encoder_hidden": (lambda v: v >= 0, "an integer >= 0 (0 = the model's hidden size)"),
    }
