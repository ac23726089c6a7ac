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

`BlockedLocalAttention` (fast path `blocked_local_attention`, on top of SDPA): a local layer over
a row longer than its window with no padding and no cache (a training row on a CPU, a prefill)
runs SDPA per block of `window_size` queries against only the keys their windows reach (the
first block plainly causal), instead of one [T, T] banded mask: the kernel cannot skip the
masked blocks of a band, so for T = 600 and a window of 256 it computes 0.54-0.63 of the scores
(0.54 where the causal first block skips its upper half).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

from sumtune.fastpath.base import FastPath, FastPathContext

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


class GPTNeoBlockedLocalAttention(GPTNeoSdpaAttention):
    """A local GPT-Neo layer whose long unpadded, uncached rows run blockwise (see the module doc)."""

    def _attn(self, query, key, value, attention_mask=None):
        q_len, kv_len, w = query.shape[-2], key.shape[-2], self.config.window_size
        if attention_mask is not None or q_len != kv_len or q_len <= w:
            return super()._attn(query, key, value, attention_mask)
        key, value = key.to(query.dtype), value.to(query.dtype)
        p = self.attn_dropout.p if self.training else 0.0
        outs = []
        for s in range(0, q_len, w):
            e, k0 = min(q_len, s + w), max(0, s - w + 1)  # queries [s, e) reach keys [k0, e)
            band = None if s == 0 else self.bias[0, 0, s:e, k0:e]
            outs.append(F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, k0:e], value[:, :, k0:e],
                                                       attn_mask=band, dropout_p=p, is_causal=s == 0, scale=1.0))
        return torch.cat(outs, dim=2), None


def _attention_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, GPTNeoSelfAttention)]


def _configs(model: nn.Module) -> list:
    """The distinct Transformers configs inside `model` (a causal LM and its body share one)."""
    return list({id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}.values())


def _switchable(model: nn.Module) -> bool:
    """GPT-Neo (our SDPA class) or a model Transformers runs with SDPA itself (GPT-2)."""
    return bool(_attention_modules(model)) or any(getattr(m, "_supports_sdpa", False)
                                                   for m in model.modules() if isinstance(m, PreTrainedModel))


def _switch(model: nn.Module, want: str, set_attr=setattr) -> str:
    """Set every GPT-Neo attention class and every config's attention choice to `want` through
    `set_attr(obj, name, value)`. Transformers builds the attention mask from the config: a
    boolean one (or None) for "sdpa", an additive float one for "eager"."""
    cls = GPTNeoSdpaAttention if want == "sdpa" else GPTNeoSelfAttention
    for m in _attention_modules(model):
        if type(m) is not cls:
            set_attr(m, "__class__", cls)  # same parameters and buffers; only `_attn` differs
    for cfg in _configs(model):
        if cfg._attn_implementation_internal != want:
            set_attr(cfg, "_attn_implementation_internal", want)
    return want


def set_attention(model: nn.Module, implementation: str = "auto") -> str:
    """Switch the attention of a loaded GPT-Neo or GPT-2 (possibly inside a method wrapper)
    to "sdpa" or "eager"; "auto" means sdpa. Returns the implementation now in use. Not undone
    by `revert_fast_paths` (tests and benchmarks use it to pick the reference)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if not _switchable(model):
        return "unchanged"
    return _switch(model, "eager" if implementation == "eager" else "sdpa")


def attention_in_use(model: nn.Module) -> str:
    configs = _configs(model)
    return configs[0]._attn_implementation if configs else "unchanged"


class _EagerReference(FastPath):
    """The reference attention (eager), set where SDPA is not applied; recorded so revert undoes it."""

    name = "eager_attention"

    def apply(self, model: nn.Module, ctx: FastPathContext | None = None) -> None:
        if _switchable(model):
            _switch(model, "eager", lambda obj, attr, value: self.set_attr(model, obj, attr, value))


class SdpaAttention(FastPath):
    """SDPA attention (GPT-Neo: our class above; GPT-2: Transformers' own). Where it does not apply
    (`train.fast` off, or not listed, or `model.attention: eager`), `use_reference` sets eager,
    the attention Transformers gives GPT-Neo; `revert` undoes either."""

    name = "sdpa_attention"
    why = "model.attention is {attention}: one fused attention kernel instead of an fp32 [T, T] score matrix"

    def __init__(self) -> None:
        super().__init__()
        self.reference = _EagerReference()

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.attention != "eager" and _switchable(model)

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        _switch(model, "sdpa", lambda obj, attr, value: self.set_attr(model, obj, attr, value))
        self.note(model)

    def use_reference(self, model: nn.Module) -> None:
        self.reference.apply(model)

    def revert(self, model: nn.Module) -> None:
        super().revert(model)
        self.reference.revert(model)


class BlockedLocalAttention(FastPath):
    """GPT-Neo's local layers, already on SDPA, switched to `GPTNeoBlockedLocalAttention`; revert
    puts the SDPA class back (sdpa_attention's own revert then restores eager)."""

    name = "blocked_local_attention"
    why = "GPT-Neo local layers over rows longer than the window: SDPA per window block, no [T, T] band"

    @staticmethod
    def _local(model: nn.Module) -> list[nn.Module]:
        return [m for m in _attention_modules(model) if type(m) is GPTNeoSdpaAttention and m.attention_type == "local"]

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return bool(self._local(model))

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        for m in self._local(model):
            self.set_class(model, m, GPTNeoBlockedLocalAttention)
        self.note(model)
