"""Full fine-tuning has no options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class FullConfig(MethodConfigBase):
    """Full fine-tuning: every weight trains."""

    # GPT-2/GPT-Neo fine-tuning at 1e-5 .. 1e-4 (Radford et al. 2019; HF run_clm's 5e-5).
    LR_GRIDS = {"full": (1e-5, 3e-5, 1e-4)}
    DEMO_LR_GRIDS = {"full": (1e-3, 3e-3, 1e-2)}
