"""What one row of a decoding batch uses beyond the shared LM.

``sumtune serve`` decodes rows of several runs of one base model together: a row may carry
its own soft prompt (keys/values computed once by ``Generator.prompt_kv`` and put in front
of its prompt) and its own LoRA adapter (a name routed to PEFT's mixed-adapter forward).
A single method model decodes every row with its own variant (``Generator.own``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.decoding.cache import LayerKV

BASE_ADAPTER = "__base__"  # PEFT's name for "no LoRA adapter" in a mixed-adapter batch

KV = list[LayerKV]  # a soft prompt's (keys, values) per layer, [1, heads, n_soft, head_dim] each


@dataclass(frozen=True)
class Variant:
    """One row's soft prompt keys/values (None: no soft prompt) and LoRA adapter name."""

    soft_kv: KV | None = None
    adapter: str = BASE_ADAPTER

    @property
    def n_soft(self) -> int:
        return 0 if self.soft_kv is None else self.soft_kv[0][0].shape[-2]
