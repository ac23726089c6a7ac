"""The fine-tuning methods, one file each, behind the `Method` interface (base.py)."""

from __future__ import annotations

from sumtune.errors import UserError
from sumtune.methods.base import Method


def get_method(name: str) -> Method:
    """The method named `name` (config.METHODS: zero_shot, prompt_tuning, prefix_tuning, p_tuning, lora,
    ia3, last_layers, full)."""
    from sumtune.methods import (
        full,
        ia3,
        last_layers,
        lora,
        p_tuning,
        prefix_tuning,
        prompt_tuning,
        zero_shot,
    )

    registry = {m.name: m for m in (zero_shot.ZeroShot(), prompt_tuning.PromptTuning(), prefix_tuning.PrefixTuning(),
                                     p_tuning.PTuning(), lora.Lora(), ia3.IA3(), last_layers.LastLayers(),
                                     full.Full())}
    if name not in registry:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(registry)}")
    return registry[name]


__all__ = ["Method", "get_method"]
