"""Equal-cost training: `train.budget_seconds` or `train.budget_flops` ends a run after the
optimizer step at which the spent budget reaches its limit (the epochs / max_steps still cap it).

What is spent:
- seconds: the time of the optimizer steps only, the clock results.json reports as
  `train_seconds` (validation, ROUGE decoding at validation, checkpoints and setup are not in it);
  with several processes the slowest process's time, so that all stop at the same step;
- FLOPs: the model FLOPs of each step (`sumtune.flops.step_flops`, from the step's real tokens),
  summed; known before the step, so the stopping step is known exactly in advance.

The learning-rate schedule fits the budget: warmup then decay run over the run's *position*,
the larger of steps done / configured steps and budget spent / limit (the step just taken
included: its FLOPs exactly, its seconds estimated as the step before's), so the rate has decayed to its end
exactly where the run stops, whichever limit stops it and however the step time varies (the
feature cache of head-only tuning makes its later epochs several times faster). Everything the
schedule reads is in `Progress`, so a resumed run continues it as it was (bit-identically for a
FLOPs budget; a seconds budget depends on the clock by nature).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sumtune.flops import ModelShape, step_flops
from sumtune.methods import get_method

if TYPE_CHECKING:  # no torch import for the CLI and `experiment`'s planning
    from sumtune.training.state import Progress, StepPlan

KINDS = {"seconds": "budget_seconds", "flops": "budget_flops"}


@dataclass(frozen=True)
class Budget:
    kind: str  # "seconds" | "flops"
    limit: float

    def spent(self, p: Progress) -> float:
        return p.step_seconds if self.kind == "seconds" else float(p.flops)

    def reached(self, p: Progress) -> bool:
        return self.spent(p) >= self.limit

    def text(self) -> str:
        return f"{self.limit:g} s of optimizer steps" if self.kind == "seconds" else f"{self.limit:.3g} training FLOPs"


def budget_of(tc) -> Budget | None:
    """The run's budget from its TrainConfig (`config.validate` allows at most one)."""
    for kind, key in KINDS.items():
        if getattr(tc, key) is not None:
            return Budget(kind, float(getattr(tc, key)))
    return None


class StepFlops:
    """Training FLOPs of a step from its sample indices (every process's rows; real tokens only)."""

    def __init__(self, shape: ModelShape, method_cfg, trainable: int, lengths: Sequence[int]):
        self.shape, self.method, self.trainable, self.lengths = shape, method_cfg.name, trainable, lengths
        self.options = get_method(method_cfg.name).options(method_cfg)

    def __call__(self, chunk: Sequence[int]) -> int:
        tokens = sum(self.lengths[i] for i in chunk)
        return step_flops(self.shape, self.method, self.trainable, tokens, self.options)


def planned_step_flops(plan: StepPlan, n: int, order_lengths: list[int] | None, flops: StepFlops) -> Iterator[int]:
    """Each planned optimizer step's training FLOPs, in order: the same walk over the epoch
    orders as the loop's."""
    for step in range(plan.total):
        epoch, first, _ = plan.epoch_bounds(step)
        if step == first:
            order = plan.order(n, epoch, order_lengths)
        k = step - first
        yield flops(order[k * plan.per_step:(k + 1) * plan.per_step])


def flops_steps(plan: StepPlan, n: int, order_lengths: list[int] | None, flops: StepFlops, limit: float) -> int:
    """The step at which a FLOPs budget is reached (the plan's total when it is not)."""
    spent = 0
    for step, f in enumerate(planned_step_flops(plan, n, order_lengths, flops)):
        spent += f
        if spent >= limit:
            return step + 1
    return plan.total


def schedule_factor(tc, position: float) -> float:
    """The learning rate's factor at a position in [0, 1] of the run: linear warmup over
    `warmup_ratio`, then linear/cosine decay to 0, or constant."""
    position = min(max(position, 0.0), 1.0)
    w = tc.warmup_ratio
    if position < w:
        return position / w
    if tc.scheduler == "constant":
        return 1.0
    q = (position - w) / (1 - w)
    return 1.0 - q if tc.scheduler == "linear" else 0.5 * (1.0 + math.cos(math.pi * q))


class BudgetSchedule:
    """The LambdaLR function of a budget run: the schedule at the position after the step in flight
    (the scheduler steps at the end of each optimizer step)."""

    def __init__(self, tc, budget: Budget, total: int, ahead: int = 0):
        self.tc, self.budget, self.total = tc, budget, total
        self.one_step = min(total, ahead or total) == 1  # as make_optimizer's: one step must train, no warmup
        self.progress: Progress | None = None  # the loop's, set before the first step
        self.pending_flops = 0  # the step in flight's FLOPs

    def position(self) -> float:
        p = self.progress
        spent = (p.step_seconds + p.last_step_seconds if self.budget.kind == "seconds"
                 else p.flops + self.pending_flops)
        return max((p.step + 1) / self.total, spent / self.budget.limit)

    def __call__(self, step: int) -> float:
        if step == 0:  # LambdaLR's call at construction: the first step's rate (warmup starts at 0)
            return 1.0 if self.one_step or not self.tc.warmup_ratio else 0.0
        return schedule_factor(self.tc, self.position())


def budget_record(budget: Budget | None, p: Progress, epochs: float, trained: bool = True) -> dict | None:
    """results.json's `budget`: the limit, what was spent and reached within it, and what stopped the run."""
    if budget is None:
        return None
    stopped = ("no training" if not trained else "budget" if p.stopped_by_budget
               else "early stopping" if p.early_stopped else "steps")
    return {"kind": budget.kind, "limit": budget.limit, "spent": budget.spent(p), "steps": p.step,
            "epochs": round(epochs, 3), "tokens": p.tokens, "schedule_steps": p.schedule_steps,
            "stopped_by_budget": p.stopped_by_budget, "stopped_by": stopped}

