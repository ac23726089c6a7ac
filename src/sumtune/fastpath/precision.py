"""Frozen weights in the autocast dtype once, instead of a cast per use.

Under `torch.autocast`, every linear layer casts its fp32 weight to bf16 on each call,
and the cast is not cached for weights that do not require grad - i.e. for every
frozen weight, every micro-batch. Casting the frozen linear weights (and biases) once
gives the very same bf16 operands, so the results are bit-identical. Embeddings and
layer norms stay in fp32 (autocast runs them in fp32; the residual stream stays fp32),
trainable parameters stay fp32 master weights."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weight and bias of every frozen Linear/Conv1D (GPT-2) in place; returns how many.
    An LM head tied to the input embeddings is left alone (the embedding needs fp32)."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = 0
    for m in model.modules():
        if not isinstance(m, (nn.Linear, Conv1D)) or m.weight.requires_grad or id(m.weight) in tied:
            continue
        if m.bias is not None and m.bias.requires_grad:
            continue
        for p in (m.weight, m.bias):
            if p is not None and p.dtype != dtype:
                p.data = p.data.to(dtype)
        n += 1
    return n
