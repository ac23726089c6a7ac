"""One optimizer step over this process's micro-batches (`data.batching.micro_batches`): the
token loss, forward/backward with exact accumulation, clipping, the update.

Exactness, which the tests check:
- Accumulation. One optimizer step takes the next `batch_size x processes x grad_accum`
  samples of the epoch order. Its loss is the sum of token cross-entropies over all of them
  divided by their total number of target tokens (counted before the forward passes and
  summed over processes), never a mean of per-micro-batch means, so batch 1 x accumulation 4
  and batch 4 x accumulation 1 give the same gradient.
- Rows. Where the loss runs each row alone anyway (`fastpath.loss.rows_alone`: on a CPU, one
  process), each row's backward runs before the next row's forward: the gradient is the same
  sum, and the activations held for a backward are one row's instead of the micro-batch's.
- Processes. DDP averages gradients over the P processes, so the loss is multiplied by P. A
  process left without samples at the end of an epoch runs a filler: a real sample through
  the same forward/backward with its loss times 0 (zero gradients, not counted), so every
  process makes the same collective calls whatever the loss function skips.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from sumtune.config import Config
from sumtune.errors import UserError
from sumtune.fastpath.loss import rows_alone
from sumtune.metrics import summed_token_loss
from sumtune.training.sharding import as_plain, gradient_sync


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions of a batch, and their number
    (the reference path: full logits; `metrics.summed_token_loss` is the one definition)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return summed_token_loss(logits, batch["labels"])


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """The number of positions `token_loss_sum` scores in `batch`."""
    return int((batch["labels"][:, 1:] != -100).sum())


# Target tokens per head pass on the whole-step path: logits, their fp32 copy and gradients
# take ~12 bytes x rows x vocab (~0.6 GB at 1024 rows and GPT-2's 50,257 words).
WHOLE_STEP_ROWS = 1024


def groups_by_targets(batches: list[dict], targets: list[int], limit: int) -> list[list[dict]]:
    """Consecutive micro-batches grouped so that a group holds at most `limit` target tokens
    (a micro-batch above the limit alone); `targets`: each micro-batch's count."""
    groups: list[list[dict]] = []
    total = limit + 1
    for b, n in zip(batches, targets):
        if total + n > limit:
            groups.append([])
            total = 0
        groups[-1].append(b)
        total += n
    return groups


def single_rows(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The rows of a micro-batch, each a batch of one (a loss that runs rows alone gives each the
    same result as in the batch; backward row by row holds one row's activations at a time)."""
    return [{k: v[r:r + 1] for k, v in batch.items()} for r in range(len(batch["input_ids"]))]


class StepResult(NamedTuple):
    loss: float  # per target token over the whole step, all processes
    targets: int
    tokens: int  # input tokens (no padding), all processes
    grad_norm: float
    lr: float


def optimizer_step(accelerator, model, optimizer, scheduler, loss_fn, batches: list[tuple[dict, bool]],
                   trained: list, max_grad_norm: float) -> StepResult:
    """Forward/backward over this process's micro-batches (`data.batching.micro_batches`: (batch,
    counts) pairs), then clip and step."""
    device = accelerator.device
    targets = [count_targets(b) if counted else 0 for b, counted in batches]
    tokens = sum(int(b["attention_mask"].sum()) for b, counted in batches if counted)
    counts = torch.tensor([sum(targets), tokens], dtype=torch.float64, device=device)
    n_targets, n_tokens = (int(x) for x in accelerator.reduce(counts, "sum"))
    scale = accelerator.num_processes / n_targets  # sum / all targets; DDP divides gradients by the processes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    if getattr(loss_fn, "whole_step", False) and accelerator.num_processes == 1:
        # a loss that takes several micro-batches at once (the head-only feature cache): one
        # backward per group of up to WHOLE_STEP_ROWS target tokens, which bounds the logits' memory
        for group in groups_by_targets([b for b, _ in batches], targets, WHOLE_STEP_ROWS):
            with accelerator.autocast():
                loss, _ = loss_fn.step_loss(model, [{k: v.to(device) for k, v in b.items()} for b in group])
            accelerator.backward(loss * scale)
            loss_sum += loss.detach().double()
    else:
        if accelerator.num_processes == 1 and rows_alone(loss_fn, model, device):
            batches = [(row, counted) for batch, counted in batches for row in single_rows(batch)]
        for i, (batch, counted) in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = i == len(batches) - 1  # gradients are all-reduced (FSDP: reduce-scattered) once per step
            with gradient_sync(accelerator, model, sync):
                with accelerator.autocast():
                    loss, _ = loss_fn(model, batch)
                if not counted:  # a filler: same graph, zero gradients
                    loss = loss * 0.0
                accelerator.backward(loss * scale)
            loss_sum += loss.detach().double()
    loss = float(accelerator.reduce(loss_sum, "sum")) / n_targets
    lr = scheduler.get_last_lr()[0]
    if not math.isfinite(loss):  # the caller stops; no update with a broken loss
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, n_targets, n_tokens, float("nan"), lr)
    grad_norm = float(as_plain(accelerator.clip_grad_norm_(trained, max_grad_norm)))
    if not math.isfinite(grad_norm) and accelerator.scaler is None:  # fp16's scaler skips such steps itself
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, n_targets, n_tokens, grad_norm, lr)
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips steps with inf gradients
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, n_targets, n_tokens, grad_norm, lr)


def oom_error(e: BaseException, cfg: Config, step: int) -> BaseException:
    """Out of memory -> a one-line UserError saying how to continue; other errors unchanged."""
    if not isinstance(e, torch.cuda.OutOfMemoryError) and "can't allocate memory" not in str(e):
        return e
    b, a = cfg.train.batch_size, cfg.train.grad_accum
    hint = f"--batch-size {b // 2} --grad-accum {a * 2}" if b > 1 else f"--max-length {cfg.data.max_length // 2}"
    return UserError(
        f"out of memory at step {step} (batch size {b}, max length {cfg.data.max_length}); use a smaller "
        f"micro-batch with more accumulation (same effective batch), e.g. {hint}, or a shorter --max-length; "
        "add --resume to continue from the last checkpoint")
