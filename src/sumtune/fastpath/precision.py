"""Frozen weights in the autocast dtype once, instead of a cast per use.

Under `torch.autocast`, every linear layer casts its fp32 weight to bf16 on each call,
and the cast is not cached for weights that do not require grad - i.e. for every
frozen weight, every micro-batch. Casting the frozen linear weights (and biases) once
gives the very same bf16 operands, so the results are bit-identical. Embeddings and
layer norms stay in fp32 (autocast runs them in fp32; the residual stream stays fp32),
trainable parameters stay fp32 master weights. A cast linear also casts its fp32 input
once for all the layers that read it (`cast_once`: GPT-Neo's q, k and v read one layer
norm output, and autocast would cast it three times forward and three gradients back);
the forward stays bit-identical, the gradients of those layers add up in bf16 before the
one cast back to fp32.

For decoding (`cast_for_inference`) nothing trains: every linear is cast once, and an LM
head tied to the input embeddings gets its own low-precision copy (the embedding lookup
stays fp32). Without it, autocast re-casts every weight - the 38.6M-entry head included -
at every decoding step (`bench/generate.py` measures the result against HF `generate`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def memo_on(x: torch.Tensor, name: str, key: tuple, make: Callable[[], Any]) -> Any:
    """`make()`, computed once per `key` for the tensor x and kept on x as attribute `name`: layers
    reading the same tensor share one result (a new tensor or a changed key computes it again)."""
    shared = getattr(x, name, None)
    if shared is None or shared[0] != key:
        shared = (key, make())
        setattr(x, name, shared)
    return shared[1]


def cast_once(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`, the same tensor for every layer that reads x (see the module doc)."""
    if x.dtype == dtype:
        return x
    # inference tensors have no version counter; nothing between q, k and v changes x in place.
    # Grad mode is in the key: a copy made without autograd must not serve a read that needs it.
    key = (None if x.is_inference() else x._version, dtype, torch.is_grad_enabled())
    return memo_on(x, "_sumtune_cast", key, lambda: x.to(dtype))


class CastOnceLinear(nn.Linear):
    """A frozen nn.Linear whose weight is already in the autocast dtype: under autocast its input
    is cast with `cast_once`, so layers reading one tensor (GPT-Neo's q, k, v) share one copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and self.weight.dtype == torch.get_autocast_dtype(device):
            x = cast_once(x, self.weight.dtype)
        return super().forward(x)


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
        if type(m) is nn.Linear:
            m.__class__ = CastOnceLinear
        n += 1
    return n


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> int:
    """Freeze `model` and cast every linear weight to `dtype` once (see the module doc); an LM head
    tied to the input embeddings is untied into a `dtype` copy. Returns how many linears are cast."""
    from sumtune.fastpath.loss import find_head

    model.requires_grad_(False)
    head = find_head(model)
    tied = any(head.weight is m.weight for m in model.modules() if isinstance(m, nn.Embedding))
    if tied and isinstance(head, nn.Linear):  # (a LoRA-wrapped head keeps its own layout)
        head.weight = nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
    return cast_frozen_linears(model, dtype)
