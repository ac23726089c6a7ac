"""GPT-Neo and GPT-2 use the tanh-approximated GELU ("gelu_new"), which Transformers
writes as eight elementwise tensor operations (each a pass over the [T, 4*hidden] MLP
activations, forward and backward). PyTorch has the same formula as one kernel:
`gelu(x, approximate="tanh")`, wrapped by Transformers as `GELUTanh`."""

from __future__ import annotations

from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation

from sumtune.fastpath.base import FastPath, FastPathContext


def _gelus(model: nn.Module, cls: type) -> list[tuple[nn.Module, str]]:
    return [(parent, name) for parent in model.modules() for name, m in parent.named_children() if type(m) is cls]


def set_fast_gelu(model: nn.Module, enabled: bool = True) -> int:
    """Swap every `NewGELUActivation` for the fused `GELUTanh` (or back); returns how many."""
    old, new = (NewGELUActivation, GELUTanh) if enabled else (GELUTanh, NewGELUActivation)
    swaps = _gelus(model, old)
    for parent, name in swaps:
        setattr(parent, name, new())
    return len(swaps)


class FusedGelu(FastPath):
    """Each `NewGELUActivation` replaced by a `GELUTanh` (neither has parameters); revert puts the
    original module objects back."""

    name = "fused_gelu"
    why = "tanh GELU as one kernel instead of eight elementwise passes"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return bool(_gelus(model, NewGELUActivation))

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        for parent, name in _gelus(model, NewGELUActivation):
            self.set_attr(model, parent, name, GELUTanh())
        self.note(model)
