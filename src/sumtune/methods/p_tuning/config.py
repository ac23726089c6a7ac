"""P-tuning's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sumtune.methods.config_base import ENCODER_HIDDEN, VirtualTokensConfig, option


@dataclass
class PTuningConfig(VirtualTokensConfig):
    """P-tuning: virtual tokens made by a trained prompt encoder, before every input."""

    encoder: Literal["mlp", "lstm"] = option("mlp", "the prompt encoder")
    encoder_hidden: int = option(0, "the encoder's width; 0 = the model's hidden size")

    RANGES = {**VirtualTokensConfig.RANGES, "encoder_hidden": ENCODER_HIDDEN}

    # Liu et al. 2021 ("GPT Understands, Too") give no rate for a frozen model that transfers (their
    # SuperGLUE runs tune the whole model); PEFT's P-tuning examples use 1e-3 and P-tuning v2 (Liu et
    # al. 2022) 5e-3 .. 1e-2: 1e-4 .. 1e-2.
    LR_GRIDS = {"p_tuning": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
    DEMO_LR_GRIDS = {"p_tuning": (1e-2, 3e-2, 1e-1)}
