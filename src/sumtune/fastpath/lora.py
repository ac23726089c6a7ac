"""A cheaper forward for PEFT's LoRA linear layers, same parameters, same semantics.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`. On a CPU the
dropout is the expensive part: `bernoulli_` draws one random number per element of
x, e.g. 1.8M draws for a [600, 3072] MLP input, which can cost more than the rank-8 matmuls
it feeds (compare `aten::bernoulli_` with them in `bench/profile_step.py --method lora --fast
false` on your machine). Here:
- the keep-mask comes from 16 random bits per element, drawn as 64-bit integers (four
  elements per draw) and compared with a threshold: each element is dropped
  independently with probability p rounded to a multiple of 2**-16 (0.05 -> 0.0500031),
  and the kept ones are rescaled by the exact 1/keep (half the random bits of 32 per
  element; their cost shows as `aten::random_` in `bench/profile_step.py`);
- under autocast the input is cast to the autocast dtype once and that copy is shared by
  the base layer, the LoRA path and the other layers reading the same tensor (q, k, v):
  autocast casts it in each of those six GEMMs, and its backward casts six gradients back
  (PEFT even casts it to the fp32 LoRA weights' dtype first). The forward is bit-identical;
  in the backward, the gradients of the layers sharing the copy add up in bf16 before the
  one cast to fp32 (the casts left show as `aten::copy_` in `bench/profile_step.py --shapes`);
- layers that read the same input tensor (q, k and v of an attention block) share one
  mask: each still sees its input dropped with probability p, element by element, but
  the three draws are one (one draw and one masked copy instead of three);
- the 1/(1-p) rescaling and `scaling` are folded into one factor applied by the final
  `addmm`, which also adds the low-rank update to the base output in one pass
  (no [T, d_out] temporaries for `* scaling` and `+`);
- on CUDA the mask is a plain `bernoulli_` (cheap there).
Mixed-adapter batches (PEFT's `adapter_names`, one name per row, "__base__" for none;
`sumtune serve` decodes rows of several runs together) take the same arithmetic per
adapter's rows, so a row's output does not depend on which path served it. Layers in a
state the fast forward does not cover (merged, adapters disabled, several active adapters,
DoRA and other variants) fall back to PEFT's own forward.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from sumtune.fastpath.base import FastPath, FastPathContext
from sumtune.fastpath.precision import ACTIVATIONS, cast_once

_BITS = 2**16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask (each element dropped independently with probability ~p) and the
    exact keep probability it was drawn with."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p), 1.0 - p
    n = shape.numel()
    drop = min(round(p * _BITS), _BITS - 1)  # p < 1: keep at least one value in 2**16
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    mask = words.view(torch.int16)[:n] >= (drop - 2**15)  # int16 quarters are uniform on [-2**15, 2**15)
    return mask.view(shape), 1.0 - drop / _BITS


def dropped(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """x with dropout's mask applied (not rescaled) and the keep probability. Layers that read the
    same input tensor (GPT-Neo's q, k and v projections) share one draw (kept in `ACTIVATIONS`)."""

    def draw() -> tuple[torch.Tensor, float]:
        mask, keep = keep_mask(x.shape, p, x.device)
        return x * mask, keep

    return ACTIVATIONS.get(x, "dropped", (p, x._version), draw)


@cache
def _lora_linear_class():
    from peft.tuners.lora.layer import Linear  # late: peft (3 s to import) only for a PEFT method

    class FastLoraLinear(Linear):
        """PEFT LoRA Linear with the forward described in the module docstring."""

        def _fast(self, name: str) -> bool:
            return name not in self.lora_variant and self.lora_B[name].bias is None

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            names = kwargs.get("adapter_names") if set(kwargs) == {"adapter_names"} else None
            adapters = self.active_adapters if names is None else [
                a for a in dict.fromkeys(names) if a in self.lora_A]  # "__base__" and absent adapters: none
            if (args or (kwargs and names is None) or self.disable_adapters or self.merged
                    or (names is None and (len(adapters) != 1 or adapters[0] not in self.lora_A))
                    or not all(self._fast(a) for a in adapters)):
                return super().forward(x, *args, **kwargs)
            autocast = torch.is_autocast_enabled(x.device.type)
            if autocast:
                x = cast_once(x, torch.get_autocast_dtype(x.device.type))
            result = self.base_layer(x)
            if names is None or (len(adapters) == 1 and all(n == adapters[0] for n in names)):
                return self._update(x, result, adapters[0], autocast) if adapters else result
            for a in adapters:  # mixed batch (`sumtune serve`): each adapter's rows, same arithmetic
                rows = [i for i, n in enumerate(names) if n == a]
                result[rows] = self._update(x[rows], result[rows], a, autocast)
            return result

        def _update(self, x: torch.Tensor, result: torch.Tensor, name: str, autocast: bool) -> torch.Tensor:
            """result + the adapter's low-rank update of x (dropout folded into the scale)."""
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            scale = self.scaling[name]
            if not autocast:
                x = self._cast_input_dtype(x, lora_a.weight.dtype)
            dropout = self.lora_dropout[name]
            p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
            if p > 0:
                x, keep = dropped(x, p)
                scale = scale / keep
            low = F.linear(x, lora_a.weight)
            flat = result.reshape(-1, result.shape[-1])
            b = lora_b.weight.t().to(low.dtype)
            out = torch.addmm(flat.to(low.dtype), low.reshape(-1, low.shape[-1]), b, alpha=scale)
            return out.view(result.shape).to(result.dtype)

    return Linear, FastLoraLinear


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    base_cls, fast_cls = _lora_linear_class()
    return [m for m in model.modules() if type(m) in (base_cls, fast_cls)]


def set_fast_lora(model: nn.Module, enabled: bool = True) -> int:
    """Switch every PEFT LoRA Linear in `model` to the fast forward (or back); returns how many."""
    base_cls, fast_cls = _lora_linear_class()
    layers = _lora_layers(model)
    for m in layers:
        m.__class__ = fast_cls if enabled else base_cls
    return len(layers)


class FastLora(FastPath):
    """The fast LoRA forward above for every PEFT LoRA Linear (a class swap, same parameters)."""

    name = "fast_lora"
    why = "PEFT LoRA layers: one cheaper dropout draw per input, base and update in one addmm"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return bool(_lora_layers(model))

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        _, fast_cls = _lora_linear_class()
        for m in _lora_layers(model):
            if type(m) is not fast_cls:
                self.set_class(model, m, fast_cls)
        self.note(model)

    def drop_state(self, model: nn.Module) -> None:
        ACTIVATIONS.clear()
