"""The fine-tuning methods, one file each, behind the `Method` interface (base.py)."""

from __future__ import annotations

from sumtune.errors import UserError
from sumtune.methods.base import Method


def get_method(name: str) -> Method:
    """The method named `name` (zero_shot, prompt_tuning, lora, last_layers, full)."""
    from sumtune.methods import full, last_layers, lora, prompt_tuning, zero_shot

    registry = {m.name: m for m in (zero_shot.ZeroShot(), prompt_tuning.PromptTuning(), lora.Lora(),
                                     last_layers.LastLayers(), full.Full())}
    if name not in registry:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(registry)}")
    return registry[name]


__all__ = ["Method", "get_method"]
