"""Soft-prompt tuning's options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class PromptTuningConfig(MethodConfigBase):
    n_tokens: int = 20  # virtual tokens in front of every input
    init_text: str = "SUMMARIZE the following news article in a few sentences:"
    init_random: bool = False  # init from random vocabulary embeddings instead

    RANGES = {"n_tokens": (lambda v: v >= 1, "an integer >= 1")}
