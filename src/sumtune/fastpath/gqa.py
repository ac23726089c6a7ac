"""Grouped-query attention without expanding keys and values (Llama layout, training).

Transformers' SDPA path reads the key/value heads unexpanded (`enable_gqa`) only when there is
no mask; with one (a padded batch: on a GPU, under DDP, or a method that adds a mask) it copies
every key/value head once per query head of its group (`repeat_kv`: 3x the keys and values of
SmolLM2-135M, forward and backward). Here SDPA gets the boolean mask and `enable_gqa` together
(PyTorch's flash kernels, CPU included, take both) - same scores, no copies.
"""

from __future__ import annotations

from torch import nn

from sumtune.fastpath.base import FastPathContext
from sumtune.fastpath.rotary import FlaggedAttentionPath, llama_attentions


class GqaAttention(FlaggedAttentionPath):
    name = "gqa_attention"
    why = "grouped-query attention: SDPA reads the key/value heads unexpanded, mask or not"
    flag = "gqa_unexpanded"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and any(m.num_key_value_groups > 1 for m in llama_attentions(model))
