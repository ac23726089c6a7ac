"""Scaled-dot-product attention for GPT-Neo, and the attention switch for a loaded model.

Transformers ships only eager and flash-attn-2 attention for GPT-Neo. Its eager path
materialises the full [T, T] score matrix in fp32, masks it with a stored boolean
table and a float mask, and runs a separate softmax. `GPTNeoSdpaAttention` computes
the same thing with `torch.nn.functional.scaled_dot_product_attention`, keeping
GPT-Neo's quirks:
- scores are NOT scaled by 1/sqrt(head_dim) (`scale=1.0`);
- "local" layers see only the last `window_size` keys (the same band as eager's
  stored table), "global" layers are plainly causal;
- padding comes in as the boolean mask Transformers builds for "sdpa" (None when
  nothing is masked, then plain causal layers use the `is_causal` kernel);
- the KV cache works unchanged (the band is taken bottom-right aligned, as in eager);
  a local layer reads only the keys inside its window (when decoding: the last
  `window_size` of the cache instead of all of it).
A query row with every key masked (a left-padding position) gives 0 here instead of
eager's arbitrary finite values; no real token ever reads it.

GPT-2 has SDPA in Transformers already; `set_attention` just selects it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

IMPLEMENTATIONS = ("auto", "sdpa", "eager")


class GPTNeoSdpaAttention(GPTNeoSelfAttention):
    """GPT-Neo self-attention computed by SDPA (same weights and buffers as eager)."""

    def _attn(self, query, key, value, attention_mask=None):
        q_len, kv_len = query.shape[-2], key.shape[-2]
        mask = attention_mask  # None, or bool [B, 1, q, kv] (causal & padding), True = attend
        start = 0
        if self.attention_type == "local":
            # keys before `start` are outside every query's window: skip them (decoding reads less cache)
            start = max(0, kv_len - q_len - self.config.window_size + 1)
            key, value = key[:, :, start:], value[:, :, start:]
            mask = None if mask is None else mask[..., start:]
        band_needed = self.attention_type == "local" and kv_len > self.config.window_size
        causal_needed = mask is None and q_len > 1 and q_len != kv_len  # cached prefix, no padding
        if band_needed or causal_needed:
            table = self.bias[:, :, kv_len - q_len : kv_len, start:kv_len]
            mask = table if mask is None else mask & table
        out = F.scaled_dot_product_attention(
            query, key.to(query.dtype), value.to(query.dtype), attn_mask=mask,
            dropout_p=self.attn_dropout.p if self.training else 0.0,
            is_causal=mask is None and q_len > 1, scale=1.0,
        )
        return out, None


def _attention_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, GPTNeoSelfAttention)]


def set_attention(model: nn.Module, implementation: str = "auto") -> str:
    """Switch the attention of a loaded GPT-Neo or GPT-2 (possibly inside a method wrapper)
    to "sdpa" or "eager"; "auto" means sdpa. Returns the implementation now in use."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    want = "eager" if implementation == "eager" else "sdpa"
    neo = _attention_modules(model)
    if neo:
        cls = GPTNeoSdpaAttention if want == "sdpa" else GPTNeoSelfAttention
        for m in neo:
            m.__class__ = cls  # same parameters and buffers; only `_attn` differs
        # the mask Transformers builds follows the config: bool/None for sdpa, additive float for eager
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and getattr(cfg, "model_type", None) == "gpt_neo":
                cfg._attn_implementation = want
        return want
    base = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)
    if base is None:
        return "unchanged"
    if base.config._attn_implementation != want:
        base.set_attn_implementation(want)
    return base.config._attn_implementation
