"""GPT-Neo and GPT-2 use the tanh-approximated GELU ("gelu_new"), which Transformers
writes as eight elementwise tensor operations (each a pass over the [T, 4*hidden] MLP
activations, forward and backward). PyTorch has the same formula as one kernel:
`gelu(x, approximate="tanh")`, wrapped by Transformers as `GELUTanh`."""

from __future__ import annotations

from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation


def set_fast_gelu(model: nn.Module, enabled: bool = True) -> int:
    """Swap every `NewGELUActivation` for the fused `GELUTanh` (or back); returns how many."""
    old, new = (NewGELUActivation, GELUTanh) if enabled else (GELUTanh, NewGELUActivation)
    swaps = [(parent, name) for parent in model.modules() for name, m in parent.named_children() if type(m) is old]
    for parent, name in swaps:
        setattr(parent, name, new())
    return len(swaps)
