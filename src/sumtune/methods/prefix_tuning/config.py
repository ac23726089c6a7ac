"""Prefix tuning's options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import ENCODER_HIDDEN, VirtualTokensConfig, option


@dataclass
class PrefixTuningConfig(VirtualTokensConfig):
    """Prefix tuning: trained keys and values before every layer's attention."""

    prefix_projection: bool = option(False, "the prefixes come from an MLP (Li & Liang's reparameterisation)")
    encoder_hidden: int = option(0, "that MLP's width; 0 = the model's hidden size")

    RANGES = {**VirtualTokensConfig.RANGES, "encoder_hidden": ENCODER_HIDDEN}

    # Li & Liang 2021 train reparameterised prefixes at 5e-5 .. 8e-5 (GPT-2 table-to-text, BART
    # summarization at the same order); directly trained prefixes take far larger rates (PEFT's
    # prefix-tuning examples: 1e-2): 1e-4 .. 1e-2 covers both (`prefix_projection` picks).
    LR_GRIDS = {"prefix_tuning": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
    DEMO_LR_GRIDS = {"prefix_tuning": (1e-2, 3e-2, 1e-1)}
