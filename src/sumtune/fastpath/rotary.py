"""Rotary position embeddings applied to queries and keys as one autograd op (Llama layout).

Transformers rotates q and k each as `x * cos + rotate_half(x) * sin`, where `rotate_half`
builds a negated copy of half of x and concatenates it (`cat`, `neg`, two multiplies and an
add per tensor, all kept for the backward). Since cos and sin repeat their first half
(`cat((freqs, freqs))`), the rotation of the halves (x1, x2) is
    (x1 * c - x2 * s,  x2 * c + x1 * s),
written here straight into the output's halves (a multiply and a fused multiply-add each), and
its backward is the rotation by the opposite angle: it saves only cos and sin, no activation.
`FastLlamaAttention` is Llama's attention with this rotation where `fused_rotary` is set on the
module and, where `gqa_unexpanded` is set (fast path `gqa_attention`, gqa.py), SDPA reading the
key/value heads unexpanded; otherwise it runs Transformers' own steps, so either flag alone works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from sumtune.fastpath.base import FastPath, FastPathContext


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, sign: float) -> torch.Tensor:
    """x's halves rotated by the angle (c, s), `sign` -1 for the opposite angle."""
    h = x.shape[-1] // 2
    out = torch.empty_like(x)
    x1, x2, o1, o2 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=o2).addcmul_(x1, s, value=sign)
    return out


class RotaryFunction(torch.autograd.Function):
    """(q, k) rotated by the positions' angles; cos/sin: [B, T, D] as Llama's rotary embedding gives."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        h = cos.shape[-1] // 2
        c, s = cos[..., :h].unsqueeze(1), sin[..., :h].unsqueeze(1)
        ctx.save_for_backward(c, s)
        return _rotate(q, c, s, 1.0), _rotate(k, c, s, 1.0)

    @staticmethod
    def backward(ctx, gq: torch.Tensor, gk: torch.Tensor):
        c, s = ctx.saved_tensors
        return _rotate(gq, c, s, -1.0), _rotate(gk, c, s, -1.0), None, None


def rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Llama's `apply_rotary_pos_emb(q, k, cos, sin)`, as one op."""
    return RotaryFunction.apply(q, k, cos, sin)


def gqa_sdpa(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """SDPA over 3-head keys/values for 9-head queries (`enable_gqa`: no `repeat_kv` copies), causal
    or with Transformers' boolean mask; None where Transformers' own path is needed (a float mask,
    a cached prefix without a mask, one query)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    if (mask is not None and mask.dtype != torch.bool) or q_len == 1 or (mask is None and q_len != kv_len):
        return None
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=module.attention_dropout if module.training else 0.0,
        is_causal=mask is None, scale=module.scaling, enable_gqa=True)
    return out.transpose(1, 2)


class FastLlamaAttention(LlamaAttention):
    """Llama attention with the fused rotation and unexpanded GQA, each where its flag is set."""

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        rotate = rotate_qk if self.__dict__.get("fused_rotary") else apply_rotary_pos_emb
        q, k = rotate(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        out = None
        if self.__dict__.get("gqa_unexpanded") and self.config._attn_implementation == "sdpa":
            out = gqa_sdpa(self, q, k, v, attention_mask)
        weights = None
        if out is None:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            out, weights = interface(self, q, k, v, attention_mask, dropout=self.attention_dropout if self.training
                                     else 0.0, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def llama_attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in (LlamaAttention, FastLlamaAttention)]


class FlaggedAttentionPath(FastPath):
    """Sets its `flag` on every Llama attention, switching the class to `FastLlamaAttention` first
    where needed; revert removes the flag (and puts the class back if this path switched it)."""

    flag = ""

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and bool(llama_attentions(model))  # decoding: lean_decode_step

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        for m in llama_attentions(model):
            if type(m) is not FastLlamaAttention:
                self.set_class(model, m, FastLlamaAttention)
            self.set_attr(model, m, self.flag, True)
        self.note(model)


class FusedRotary(FlaggedAttentionPath):
    """The rotation above in every Llama attention (not under `train.compile`: inductor fuses it)."""

    name = "fused_rotary"
    why = "rotary embeddings of q and k in one op: no rotate_half copies, a backward that saves only cos/sin"
    flag = "fused_rotary"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return not ctx.compile and super().applies_to(model, ctx)
