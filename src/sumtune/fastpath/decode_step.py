"""The fast path `lean_decode_step`: decoding steps of a Llama-layout model through
`sumtune.decoding.lean.LeanStep` (the model's own modules without Transformers' per-layer plumbing;
beams read their prompt's keys/values once per entry) instead of the model's forward. Nothing on the
model changes: the step is attached to the causal LM in `decoding.lean`'s registry, which the
`Generator` reads; revert detaches it."""

from __future__ import annotations

from torch import nn

from sumtune.architecture import causal_lm
from sumtune.decoding import lean
from sumtune.fastpath.base import FastPath, FastPathContext


class LeanDecodeStep(FastPath):
    name = "lean_decode_step"
    why = ("decoding a Llama-layout model: each step calls the blocks' modules directly (no per-layer "
           "keyword plumbing or mask building), and the beams of an entry share their prompt's keys/values")

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return not ctx.training and ctx.attention != "eager" and lean.llama_layout(causal_lm(model))

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        lean.attach(causal_lm(model))
        self.note(model)

    def drop_state(self, model: nn.Module) -> None:
        lean.detach(causal_lm(model))
