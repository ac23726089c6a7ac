"""The last decoder block only where the loss looks (Llama layout, training, rows alone).

The label loss (loss.py) applies the LM head at the labelled positions only, but the last block
still computed every position: queries, attention, output projection and MLP over ~600 tokens
of which ~64 are read. Only its keys and values are needed everywhere (every labelled position
attends to all earlier ones). With this path the loss tells the last block which positions it
needs (`rows_of_last_block`); the block then normalises all positions and projects their keys
and values, but computes queries, attention, the output projection, the residual adds and the
MLP at those rows only, and returns [B, rows, hidden]. Exact: a causal block's output at a
position depends on nothing computed for other positions' queries. On SmolLM2-135M (30 blocks)
that is ~3% of a step's FLOPs; with few blocks (a 4-block cut) far more. Where no rows are set
(the reference loss, decoding, a padded batch) or the block recomputes its forward in backward
(gradient checkpointing), the block runs as Transformers wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, rotate_half
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from sumtune.architecture import causal_lm
from sumtune.fastpath.base import FastPath, FastPathContext

BLOCK_CLASSES = (LlamaDecoderLayer, MistralDecoderLayer, Qwen2DecoderLayer)


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotation of x [B, heads, n, D] by cos/sin [B, n, D] (`apply_rotary_pos_emb`'s formula)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def _row_mask(mask: torch.Tensor | None, rows: torch.Tensor, length: int) -> torch.Tensor:
    """The attention mask of query `rows` over `length` keys: causal from the rows' positions, or the
    rows of the model's own mask (boolean or additive, [B, 1, L, L]) where it passed one."""
    if mask is not None:
        return mask[:, :, rows]
    return torch.arange(length, device=rows.device)[None, :] <= rows[:, None]


def attend_rows(attn: nn.Module, x: torch.Tensor, rows: torch.Tensor, position_embeddings,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Llama attention's output at `rows` only: x [B, L, hidden] normalised input, keys and values from
    all L positions, queries from `rows`; [B, rows, hidden] after the output projection."""
    b, length = x.shape[:2]
    d = attn.head_dim
    cos, sin = position_embeddings
    q = attn.q_proj(x[:, rows]).view(b, len(rows), -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, length, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, length, -1, d).transpose(1, 2)
    q, k = _rotated(q, cos[:, rows], sin[:, rows]), _rotated(k, cos, sin)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=_row_mask(mask, rows, length), dropout_p=attn.attention_dropout if attn.training else 0.0,
        scale=attn.scaling, enable_gqa=q.shape[1] != k.shape[1])
    return attn.o_proj(out.transpose(1, 2).reshape(b, len(rows), -1))


class RowsBlock(nn.Module):
    """The forward the last block gets (a class swap): at the rows `rows_of_last_block` set, else as is."""

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        state = self.__dict__.get("label_rows")
        if state is None or cache is not None or self.gradient_checkpointing or position_embeddings is None:
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        positions, length = state["positions"], state["length"]
        rows = positions + (hidden_states.shape[1] - length)  # a method's virtual tokens come first
        state["done"] = True
        h = hidden_states[:, rows] + attend_rows(self.self_attn, self.input_layernorm(hidden_states), rows,
                                                 position_embeddings, attention_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def last_block(model: nn.Module) -> nn.Module | None:
    """The last decoder block the causal LM inside `model` runs, if it has the Llama layout."""
    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix, None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    block = layers[min(len(layers), body.config.num_hidden_layers) - 1]
    return block if isinstance(block, BLOCK_CLASSES) else None


@contextmanager
def rows_of_last_block(model: nn.Module, positions: torch.Tensor, length: int) -> Iterator[dict]:
    """Within the block, a forward of `model` over `length` tokens (after any virtual ones) runs its
    last block at `positions` only, where the path is applied; the yielded dict's "done" says whether
    it did (then the final hidden states are [B, positions, hidden])."""
    block = last_block(model)
    state = {"positions": positions, "length": length, "done": False}
    if not isinstance(block, RowsBlock):
        yield state
        return
    block.__dict__["label_rows"] = state
    try:
        yield state
    finally:
        block.__dict__.pop("label_rows", None)


class LabelRowsLastBlock(FastPath):
    """`RowsBlock` on the last Llama-layout decoder block (training; not under `train.compile`)."""

    name = "label_rows_last_block"
    why = "training: the last block's queries, attention and MLP only at the labelled positions"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and not ctx.compile and last_block(model) is not None

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        self.set_mixin(model, last_block(model), RowsBlock)
