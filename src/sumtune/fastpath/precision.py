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
from torch.utils.weak import WeakIdKeyDictionary
from transformers.pytorch_utils import Conv1D

from sumtune.fastpath.base import FastPath, FastPathContext
from sumtune.fastpath.loss import find_head


class TensorMemo:
    """Results computed once per activation tensor and shared by the layers that read it, held
    here (keyed weakly by the tensor's identity: an entry goes with its tensor) rather than as
    attributes on the tensor, so the fast paths that use it can drop it when reverted."""

    def __init__(self) -> None:
        self._by_tensor = WeakIdKeyDictionary()

    def get(self, x: torch.Tensor, name: str, key: tuple, make: Callable[[], Any]) -> Any:
        """`make()`, computed once per (`name`, `key`) for the tensor x (a changed key computes it again)."""
        slots = self._by_tensor.get(x)
        if slots is None:
            slots = self._by_tensor[x] = {}
        shared = slots.get(name)
        if shared is None or shared[0] != key:
            shared = slots[name] = (key, make())
        return shared[1]

    def clear(self) -> None:
        self._by_tensor.clear()

    def __len__(self) -> int:
        return len(self._by_tensor)


ACTIVATIONS = TensorMemo()  # shared by CastOnceLinear and the fast LoRA forward (q, k, v read one tensor)


def cast_once(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`, the same tensor for every layer that reads x (see the module doc)."""
    if x.dtype == dtype:
        return x
    # inference tensors have no version counter; nothing between q, k and v changes x in place.
    # Grad mode is in the key: a copy made without autograd must not serve a read that needs it.
    key = (None if x.is_inference() else x._version, dtype, torch.is_grad_enabled())
    return ACTIVATIONS.get(x, "cast", key, lambda: x.to(dtype))


class CastOnceLinear(nn.Linear):
    """A frozen nn.Linear whose weight is already in the autocast dtype: under autocast its input
    is cast with `cast_once`, so layers reading one tensor (GPT-Neo's q, k, v) share one copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and self.weight.dtype == torch.get_autocast_dtype(device):
            x = cast_once(x, self.weight.dtype)
        return super().forward(x)


def _low_copy(p: nn.Parameter, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(p.detach().to(dtype), requires_grad=False)


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype, set_attr=setattr) -> int:
    """Give every frozen Linear/Conv1D (GPT-2) a weight and bias in `dtype` (new Parameters, set
    through `set_attr(obj, name, value)`); returns how many. An LM head tied to the input
    embeddings is left alone (the embedding needs fp32)."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    copies: dict[int, nn.Parameter] = {}  # a weight shared by two layers stays shared
    n = 0
    for m in model.modules():
        if not isinstance(m, (nn.Linear, Conv1D)) or m.weight.requires_grad or id(m.weight) in tied:
            continue
        if not m.weight.is_floating_point():  # QLoRA's 4-bit weights (bitsandbytes Linear4bit): left as they are
            continue
        if m.bias is not None and m.bias.requires_grad:
            continue
        for attr in ("weight", "bias"):
            p = getattr(m, attr)
            if p is not None and p.dtype != dtype:
                set_attr(m, attr, copies.setdefault(id(p), _low_copy(p, dtype)))
        if type(m) is nn.Linear:
            set_attr(m, "__class__", CastOnceLinear)
        n += 1
    return n


def cast_for_inference(model: nn.Module, dtype: torch.dtype, set_attr=setattr,
                       freeze: Callable[[nn.Parameter], None] = lambda p: p.requires_grad_(False)) -> int:
    """Freeze `model` and cast every linear weight to `dtype` once (see the module doc); an LM head
    tied to the input embeddings is untied into a `dtype` copy. Returns how many linears are cast."""
    for p in model.parameters():
        if p.requires_grad:
            freeze(p)
    head = find_head(model)
    tied = any(head.weight is m.weight for m in model.modules() if isinstance(m, nn.Embedding))
    if tied and isinstance(head, nn.Linear):  # (a LoRA-wrapped head keeps its own layout)
        set_attr(head, "weight", _low_copy(head.weight, dtype))
    return cast_frozen_linears(model, dtype, set_attr)


class CastFrozenWeights(FastPath):
    """Frozen linear weights in the autocast dtype once (training), or every linear weight with the
    head untied (inference). The fp32 Parameters they replace are kept for `revert` (in host memory
    when the model is moved to a GPU after applying, as the trainer does)."""

    name = "cast_frozen_weights"
    why = "autocast to {autocast}: frozen weights cast once instead of at every use"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        """Under autocast, when something is frozen: at inference everything is, in training a linear."""
        if ctx.autocast is None:
            return False
        return not ctx.training or any(isinstance(m, (nn.Linear, Conv1D)) and not m.weight.requires_grad
                                       for m in model.modules())

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        def set_attr(obj, attr, value):
            self.set_attr(model, obj, attr, value)

        if ctx.training:
            cast_frozen_linears(model, ctx.autocast, set_attr)
        else:
            cast_for_inference(model, ctx.autocast, set_attr, lambda p: self.set_requires_grad(model, p, False))
        self.note(model)

    def cast_count(self, model: nn.Module) -> int:
        return sum(type(m) is CastOnceLinear or (isinstance(m, Conv1D) and m.weight.dtype != torch.float32)
                   for m in model.modules()) if self.is_applied(model) else 0

    def drop_state(self, model: nn.Module) -> None:
        ACTIVATIONS.clear()
