"""The decoder blocks compiled by torch.compile (inductor; its C++ backend on a CPU), under
`train.compile: true` only.

Inductor fuses each block's elementwise work (norms, rotary, activation, residual adds) into
generated loops, forward and backward. The price is paid inside the run: tracing and compiling
a block (once: the blocks share their code, and rows of other lengths reuse the graph, compiled
with dynamic shapes), minutes on a 2-core CPU. Measured on SmolLM2-135M (docs/performance.md,
"Training on the Llama layout") it did not pay for itself within a run of that size, so the
default is off. Under it the Llama layout's hand-fused ops (fused_rmsnorm, fused_rotary,
fused_swiglu) stand aside: inductor fuses the reference ops itself.
"""

from __future__ import annotations

import torch
from torch import nn

from sumtune.architecture import decoder_parts
from sumtune.errors import UserError
from sumtune.fastpath.base import FastPath, FastPathContext


def _blocks(model: nn.Module) -> list[nn.Module]:
    try:
        return list(decoder_parts(model).blocks)
    except UserError:
        return []


class CompiledBlocks(FastPath):
    """Each decoder block's call compiled (`nn.Module.compile`'s attribute, recorded so revert
    restores the eager call)."""

    name = "compiled_blocks"
    why = "train.compile: each decoder block compiled by inductor (dynamic shapes)"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and ctx.compile and bool(_blocks(model))

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        for block in _blocks(model):
            self.set_attr(model, block, "_compiled_call_impl", torch.compile(block._call_impl, dynamic=True))
        self.note(model)
