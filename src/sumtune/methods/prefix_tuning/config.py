"""Prefix tuning's options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class PrefixTuningConfig(MethodConfigBase):
    n_tokens: int = 20  # prefix positions in every layer
    prefix_projection: bool = False  # the prefixes come from an MLP (Li & Liang's reparameterisation)
    encoder_hidden: int = 0  # that MLP's width; 0 = the model's hidden size

    RANGES = {
        "n_tokens": (lambda v: v >= 1, "an integer >= 1"),
        "encoder_hidden": (lambda v: v >= 0, "an integer >= 0 (0 = the model's hidden size)"),
    }
