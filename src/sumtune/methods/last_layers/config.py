"""Last-layers tuning's options: what of the top of the model trains."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.errors import UserError
from sumtune.methods.config_base import MethodConfigBase


@dataclass
class LastLayersConfig(MethodConfigBase):
    last_k_blocks: int = 0
    train_final_norm: bool = False
    train_head: bool = True  # false: the head stays tied to the input embeddings and frozen

    RANGES = {"last_k_blocks": (lambda v: v >= 0, "an integer >= 0")}

    # Head only: a linear head tolerates larger rates (linear probing, e.g. Kumar et al. 2022 "LP-FT"):
    # 1e-4 .. 1e-3. Blocks with a frozen head ("last_layers_blocks"): the partial fine-tuning range,
    # as full fine-tuning but one step higher.
    LR_GRIDS = {"last_layers": (1e-4, 3e-4, 1e-3), "last_layers_blocks": (3e-5, 1e-4, 3e-4)}
    DEMO_LR_GRIDS = {"last_layers": (1e-3, 3e-3, 1e-2), "last_layers_blocks": (1e-3, 3e-3, 1e-2)}

    def grid(self, method: str) -> str:
        return method if self.train_head else "last_layers_blocks"

    def check(self, method: str) -> None:
        if method == "last_layers" and not self.train_head and self.last_k_blocks < 1 and not self.train_final_norm:
            raise UserError(
                "config key 'method.train_head' is false, so 'method.last_k_blocks' must be >= 1 or "
                "'method.train_final_norm' true: otherwise last_layers trains nothing"
            )
