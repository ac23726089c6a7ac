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

    def check(self, method: str) -> None:
        if method == "last_layers" and not self.train_head and self.last_k_blocks < 1 and not self.train_final_norm:
            raise UserError(
                "config key 'method.train_head' is false, so 'method.last_k_blocks' must be >= 1 or "
                "'method.train_final_norm' true: otherwise last_layers trains nothing"
            )
