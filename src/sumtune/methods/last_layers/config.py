"""Last-layers tuning's options: what of the top of the model trains."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.errors import UserError
from sumtune.methods.config_base import MethodConfigBase, option


@dataclass
class LastLayersConfig(MethodConfigBase):
    """Last layers: the top of the model trains (an untied copy of the LM head, the top blocks, the final norm)."""

    last_k_blocks: int = option(0, "top decoder blocks that train")
    train_final_norm: bool = option(False, "the final layer norm trains too")
    train_head: bool = option(True, "an untied copy of the LM head trains; false: the head stays tied to the "
                                    "input embeddings and frozen")

    RANGES = {"last_k_blocks": (lambda v: v >= 0, "an integer >= 0")}

    # Head only: a linear head tolerates larger rates (linear probing, e.g. Kumar et al. 2022 "LP-FT"):
    # 1e-4 .. 1e-3. Blocks with a frozen head ("last_layers_blocks"): the partial fine-tuning range,
    # as full fine-tuning but one step higher.
    LR_GRIDS = {"last_layers": (1e-4, 3e-4, 1e-3), "last_layers_blocks": (3e-5, 1e-4, 3e-4)}
    DEMO_LR_GRIDS = {"last_layers": (1e-3, 3e-3, 1e-2), "last_layers_blocks": (1e-3, 3e-3, 1e-2)}

    def grid(self) -> str:
        return self.name if self.train_head else "last_layers_blocks"

    def check(self) -> None:
        if not self.train_head and self.last_k_blocks < 1 and not self.train_final_norm:
            raise UserError(
                "config key 'method.train_head' is false, so 'method.last_k_blocks' must be >= 1 or "
                "'method.train_final_norm' true: otherwise last_layers trains nothing"
            )
