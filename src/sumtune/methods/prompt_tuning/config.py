"""Soft-prompt tuning's options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import VirtualTokensConfig, option


@dataclass
class PromptTuningConfig(VirtualTokensConfig):
    """Prompt tuning: a trained soft prompt (input vectors) before every input."""

    init_text: str = option("SUMMARIZE the following news article in a few sentences:",
                            "the soft prompt starts as this text's token embeddings, repeated or cut to n_tokens")
    init_random: bool = option(False, "start from random vocabulary embeddings instead of init_text")

    # Lester et al. 2021 train soft prompts at 0.3 (Adafactor); with AdamW, PEFT's prompt-tuning
    # examples use 3e-2 and P-tuning v2 (Liu et al. 2022) 5e-3..1e-2: 3e-3 .. 3e-1.
    LR_GRIDS = {"prompt_tuning": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}
    DEMO_LR_GRIDS = {"prompt_tuning": (1e-1, 3e-1, 1.0)}
