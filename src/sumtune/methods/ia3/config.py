"""IA³'s options."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase, option


@dataclass
class IA3Config(MethodConfigBase):
    """IA³: learned vectors that rescale keys, values and the MLP's inner activations."""

    target_modules: list[str] = option([], "module names to rescale; empty = the key/value projections and the "
                                           "MLP down projection")

    # Liu et al. 2022 (T-Few) train the scaling vectors at 3e-3 (Adafactor); with AdamW the same order
    # (PEFT's IA³ examples 3e-3 .. 1e-2): 1e-3 .. 1e-2.
    LR_GRIDS = {"ia3": (1e-3, 3e-3, 1e-2)}
    DEMO_LR_GRIDS = {"ia3": (1e-2, 3e-2, 1e-1)}
