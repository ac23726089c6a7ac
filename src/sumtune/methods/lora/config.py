"""LoRA's options (PEFT's LoraConfig, under sumtune's key names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sumtune.errors import UserError
from sumtune.methods.config_base import MethodConfigBase


@dataclass
class LoraConfig(MethodConfigBase):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty = every linear inside the decoder blocks
    use_dora: bool = False
    use_rslora: bool = False
    quantize: Literal["none", "4bit"] = "none"  # 4bit: QLoRA (CUDA + bitsandbytes)

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

    def check(self, method: str) -> None:
        if self.quantize != "none" and method != "lora":
            raise UserError(f"config key 'method.quantize' is {self.quantize!r}: quantised training is QLoRA, "
                            f"for method lora only (method is {method}); set method.quantize=none")
