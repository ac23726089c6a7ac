"""LoRA's options (PEFT's LoraConfig, under sumtune's key names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sumtune.methods.config_base import MethodConfigBase, option


@dataclass
class LoraConfig(MethodConfigBase):
    """LoRA: trained low-rank updates of the frozen linear layers (also DoRA, rsLoRA and QLoRA)."""

    r: int = option(8, "rank of the update matrices")
    alpha: int = option(16, "the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)")
    dropout: float = option(0.05, "dropout on the adapters' input")
    target_modules: list[str] = option([], "module names to adapt; empty = every linear inside the decoder blocks")
    use_dora: bool = option(False, "DoRA: weight-decomposed LoRA (Liu et al. 2024)")
    use_rslora: bool = option(False, "rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    quantize: Literal["none", "4bit"] = option("none", "4bit: QLoRA, the frozen base in 4-bit NF4 "
                                                       "(CUDA + pip install -e '.[qlora]')")

    RANGES = {
        "r": (lambda v: v >= 1, "an integer >= 1"),
        "alpha": (lambda v: v >= 1, "an integer >= 1"),
        "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    }

    # Hu et al. 2021 use 2e-4 for GPT-2 (E2E), PEFT examples 1e-4..1e-3. DoRA and rsLoRA keep this
    # grid: Liu et al. 2024 (DoRA) keep LoRA's rates (1e-4 .. 2e-4 on LLaMA); Kalajdzievski 2023's
    # scaling is meant to keep one rate across ranks.
    LR_GRIDS = {"lora": (1e-4, 3e-4, 1e-3)}
    DEMO_LR_GRIDS = {"lora": (3e-3, 1e-2, 3e-2)}
