"""RMSNorm (the Llama layout's norm: Llama, Mistral, Qwen2) as one autograd op.

Transformers writes it as six tensor operations (cast to fp32, pow, mean, add, rsqrt, two
multiplies), and autograd keeps several [T, hidden] intermediates of them for the backward.
`FusedRMSNorm` takes the sum of squares in one pass (`linalg.vector_norm`), normalises and
scales in two, and saves only the input and the per-row 1/rms; its backward is written out:
    x^ = x * r,   dx = r * (g*w - x^ * mean(g*w * x^)),   dw = sum over rows of g * x^.
The arithmetic is the reference's (fp32, the normalised row cast to the input dtype before the
weight), so the results are equal up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from sumtune.fastpath.base import FastPath, FastPathContext

# the RMSNorm classes with Llama's formula (weight * normalised, no offset; not Gemma's 1 + w)
NORM_CLASSES = (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm)


class RMSNormFunction(torch.autograd.Function):
    """weight * (x / rms(x)) over the last dimension, saving x and 1/rms only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least, as the reference
        rstd = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        xhat = x.to(acc) * rstd
        gw = grad.to(acc) * weight.to(acc)
        dot = (gw * xhat).mean(-1, keepdim=True)
        dx = gw.sub_(xhat * dot).mul_(rstd).to(x.dtype) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (grad.to(acc) * xhat.to(x.dtype).to(acc)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return dx, dw, None


class FusedRMSNormModule(nn.Module):
    """The forward a fused RMSNorm gets (a class swap: the same `weight` and `variance_epsilon`)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def _norms(model: nn.Module) -> list[nn.Module]:
    classes = NORM_CLASSES
    return [m for m in model.modules() if type(m) in classes]


class FusedRMSNorm(FastPath):
    """Every Llama-formula RMSNorm switched to `RMSNormFunction` (a class swap, same parameters)."""

    name = "fused_rmsnorm"
    why = "RMSNorm as one op: one pass for the sum of squares, a written-out backward saving x and 1/rms"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and not ctx.compile and bool(_norms(model))  # decoding keeps the reference's rounding

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        for m in _norms(model):
            self.set_mixin(model, m, FusedRMSNormModule)
        self.note(model)
