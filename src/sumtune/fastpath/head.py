"""The LM head for a few rows at a time (decoding).

On a CPU, `F.linear(x, W)` with x [8, 768] and the [50257, 768] head weight can run as one
GEMM that repacks the whole 154 MB weight for every call (it did, in fp32, on the 2-core CPU
this path was measured on); `(W @ x.T).T` reads it in place. Which of the two is faster
depends on the CPU's GEMM library and the dtype. Larger inputs (training, prefill) take the usual path unchanged. Under autocast, with the
weight already in the autocast dtype (`cast_for_inference`), an fp32 input is cast first:
`F.linear` on a 3-D fp32 input would otherwise copy the whole transposed weight (a
[1, 768, 50257] `aten::copy_` per prefill in `bench/profile_step.py --generate --shapes`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sumtune.fastpath.base import FastPath, FastPathContext

MAX_ROWS = 16


class FewRowsLinear(nn.Linear):
    """nn.Linear computing `(W @ x.T).T` when x has at most MAX_ROWS rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        device = x.device.type
        if (x.dtype != self.weight.dtype and torch.is_autocast_enabled(device)
                and self.weight.dtype == torch.get_autocast_dtype(device)):
            x = x.to(self.weight.dtype)  # what autocast would do; F.linear would also copy the weight
        if rows > MAX_ROWS or rows == 0 or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        xt = x.reshape(rows, x.shape[-1]).t()
        y = self.weight @ xt if self.bias is None else torch.addmm(self.bias[:, None], self.weight, xt)
        return y.t().reshape(*x.shape[:-1], self.out_features)


def _plain_head(model: nn.Module) -> nn.Module | None:
    from sumtune.fastpath.loss import find_head
    from sumtune.fastpath.precision import CastOnceLinear

    head = find_head(model)
    return head if type(head) in (nn.Linear, FewRowsLinear, CastOnceLinear) else None


def set_fast_head(model: nn.Module, enabled: bool = True) -> bool:
    """Switch the LM head (a plain nn.Linear) to `FewRowsLinear` or back; whether it is switched."""
    head = _plain_head(model)
    if head is None:
        return False
    head.__class__ = FewRowsLinear if enabled else nn.Linear
    return enabled


class FewRowsHead(FastPath):
    """`FewRowsLinear` for the LM head, at inference only: training runs the head over many rows
    (or, with the label-positions loss, not through this module at all)."""

    name = "few_rows_head"
    why = "decoding: the LM head reads its weight in place for the few rows of a step"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return not ctx.training and _plain_head(model) is not None

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        head = _plain_head(model)
        if head is not None and type(head) is not FewRowsLinear:
            self.set_class(model, head, FewRowsLinear)
        self.note(model)
