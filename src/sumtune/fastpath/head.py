"""The LM head for a few rows at a time (decoding): the input as a 2-D matrix, then `F.linear(x, W)`
or `(W @ x.T).T`, whichever a one-time measurement finds faster here.

2-D: `F.linear` on a 3-D input whose leading stride is not the packed one - the last position of
a prompt, as Transformers' `logits_to_keep=1` hands it to the head at every prefill - runs as a
batched matmul that copies the whole transposed [768, 50257] weight (torch 2.13, CPU, bf16: 211 ms
against 9 ms for the same rows as a matrix, on a 2-core AVX512-BF16 EPYC; `bench/head_rows.py`).

Which GEMM: on a CPU, `F.linear(x, W)` with x [8, 768] and the [50257, 768] head weight can run
as one GEMM that repacks the whole weight for every call (it did, in fp32, on the 2-core CPU this
path was first measured on); `(W @ x.T).T` reads it in place. Which of the two is faster depends
on the GEMM library, the dtype, the thread count and the row count: on the EPYC above the shortcut
was 2.4-2.8x faster in fp32 (2 threads, 4 rows) but 1.4-1.5x slower in bf16 (4 rows). No rule by dtype
holds across machines, so the first call for each (device, dtype, autocast, weight shape, threads,
rows rounded up to a power of two) times both on the actual operands (a few calls each, some tens
of ms once per process), keeps the shortcut only where it is clearly faster, and logs the choice.
The two differ only in rounding. Larger inputs (training, prefill without `logits_to_keep`) take
the usual path unchanged.

Under autocast, with the weight already in the autocast dtype (`cast_for_inference`), an fp32
input is cast first, as autocast would, so that both operands have the weight's dtype."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sumtune.fastpath.base import FastPath, FastPathContext
from sumtune.fastpath.loss import find_head
from sumtune.fastpath.precision import CastOnceLinear

log = logging.getLogger(__name__)

MAX_ROWS = 16
MARGIN = 0.9  # the shortcut must take under 90% of F.linear's time to be chosen
REPS = 3  # timed calls of each, after one untimed call of each

# (device, dtype, autocast dtype, weight shape, threads, rows bucket) -> whether the shortcut is
# used: a fact about this process's hardware and libraries, so it outlives a model and its fast paths
_CHOICES: dict[tuple, bool] = {}


def rows_bucket(rows: int) -> int:
    """`rows` rounded up to a power of two (1, 2, 4, 8, 16): one measurement serves each bucket."""
    return 1 << (rows - 1).bit_length()


def _shortcut(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    xt = x2d.t()
    return (weight @ xt if bias is None else torch.addmm(bias[:, None], weight, xt)).t()


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timing covers it (nothing to wait for on a CPU)."""
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize()


def time_both(linear: Callable[[], object], shortcut: Callable[[], object], device: torch.device,
              reps: int = REPS) -> tuple[list[float], list[float]]:
    """Seconds per call of `linear` and `shortcut`, `reps` each, alternating, after one untimed call
    of each (first-call set-up, such as a oneDNN primitive, is not what decoding pays per step)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(reps + 1):
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            _sync(device)
            t0 = time.perf_counter()
            (linear, shortcut)[side]()
            _sync(device)
            if i:
                times[side].append(time.perf_counter() - t0)
    return times


def pick_shortcut(linear_s: list[float], shortcut_s: list[float], margin: float = MARGIN) -> bool:
    """Whether the shortcut is clearly faster: its best time under `margin` x F.linear's best (best
    times: a busy machine only adds). A near tie keeps F.linear, the reference, so the choice does
    not flip from run to run on timing noise."""
    return min(shortcut_s) < margin * min(linear_s)


def use_shortcut(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The choice for x2d's setting: measured (and logged) on the first call, then remembered."""
    device, bucket, threads = x2d.device, rows_bucket(x2d.shape[0]), torch.get_num_threads()
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    key = (str(device), x2d.dtype, autocast, tuple(weight.shape), threads, bucket)
    choice = _CHOICES.get(key)
    if choice is None:
        with torch.no_grad():
            linear_s, shortcut_s = time_both(lambda: F.linear(x2d, weight, bias),
                                             lambda: _shortcut(x2d, weight, bias), device)
        choice = _CHOICES[key] = pick_shortcut(linear_s, shortcut_s)
        log.debug("few_rows_head: %s %s, %d thread(s), rows <= %d: F.linear %.2f ms, (W @ x.T).T %.2f ms -> %s",
                 device, str(x2d.dtype).removeprefix("torch."), threads, bucket, min(linear_s) * 1e3,
                 min(shortcut_s) * 1e3, "(W @ x.T).T" if choice else "F.linear")
    return choice


class FewRowsLinear(nn.Linear):
    """nn.Linear taking x of at most MAX_ROWS rows as a matrix, through `(W @ x.T).T` where that measured
    faster than `F.linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        device = x.device.type
        if (x.dtype != self.weight.dtype and torch.is_autocast_enabled(device)
                and self.weight.dtype == torch.get_autocast_dtype(device)):
            x = x.to(self.weight.dtype)  # what autocast would do
        if rows > MAX_ROWS or rows == 0 or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        x2d = x.reshape(rows, x.shape[-1])  # never a batched matmul that copies the weight (module doc)
        y = (_shortcut if use_shortcut(x2d, self.weight, self.bias) else F.linear)(x2d, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def _plain_head(model: nn.Module) -> nn.Module | None:
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
    (or, with the label-positions loss, not through this module at all). The shortcut-or-F.linear
    choices are kept across apply and revert: they describe the machine, not the model."""

    name = "few_rows_head"
    why = ("decoding: the LM head takes the few rows of a step as a matrix, through F.linear or (W @ x.T).T, "
           "whichever measures faster here")

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return not ctx.training and _plain_head(model) is not None

    def apply(self, model: nn.Module, ctx: FastPathContext) -> None:
        head = _plain_head(model)
        if head is not None and type(head) is not FewRowsLinear:
            self.set_class(model, head, FewRowsLinear)
        self.note(model)
