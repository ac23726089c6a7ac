"""The components of a training run (recipes/train.py holds the loop that uses them):
state.py (setup, the step layout, resumable Progress), step.py (the reference token loss, one
optimizer step with exact accumulation), validation.py, resume.py (checkpoints, run-directory
checks), records.py. A step's micro-batches come from `data.batching`."""

from sumtune.training.state import (
    Progress,
    StepPlan,
    TrainSetup,
    accelerator_for,
    make_optimizer,
    method_model,
    plan_steps,
    setup,
)
from sumtune.training.step import StepResult, count_targets, optimizer_step, token_loss_sum

__all__ = ["Progress", "StepPlan", "StepResult", "TrainSetup", "accelerator_for", "count_targets", "make_optimizer",
           "method_model", "optimizer_step", "plan_steps", "setup", "token_loss_sum"]
