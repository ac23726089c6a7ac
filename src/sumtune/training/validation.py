"""Validation during training: the token-weighted loss of a split (and, with train.select_by, the
ROUGE of a fixed validation subset) and early stopping, which keeps the best weights in RUN/adapter."""

from __future__ import annotations

import math
import time

import torch

from sumtune.data.batching import rows_of
from sumtune.training.records import Records
from sumtune.training.sharding import is_sharded, save_gathered
from sumtune.training.state import Progress, TrainSetup


@torch.no_grad()
def summed_loss(model, ds, collate, batch_size: int, loss_fn, autocast, device: torch.device,
                shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """[summed token loss, target tokens] (float64) over shard (rank, processes) of a tokenised
    split, longest first to pad little. The one dataset-loss loop, for validation and `evaluate`.

    Sharded by batch (batch b of the one-process order goes to process b mod P), so every
    batch is the one a single process would run and the float32 batch sums are the same;
    adding them in float64 is exact in any order at these sizes, so P processes give one
    process's number. Every process runs the same number of passes (a filler, counted 0, where
    its shard is shorter): under FSDP each forward is a collective."""
    rank, world = shard
    lengths = [len(x) for x in ds["input_ids"]]
    order = sorted(range(len(ds)), key=lambda i: -lengths[i])
    starts = list(range(0, len(order), batch_size))
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for k in range(math.ceil(len(starts) / world)):
        b = k * world + rank
        idx = order[starts[b]:starts[b] + batch_size] if b < len(starts) else order[:1]
        batch = {key: v.to(device) for key, v in collate(rows_of(ds, idx)).items()}
        with autocast():
            loss, n = loss_fn(model, batch)
        if b < len(starts):
            total += torch.tensor([float(loss), n], dtype=torch.float64, device=device)
    return total


def validation_loss(accelerator, model, loss_fn, ds, collate, batch_size: int) -> float:
    """Token-weighted loss over the split: each process scores its shard, then one sum over
    processes. DDP: with the unwrapped model (no collective per batch); FSDP: with the sharded
    model, whose forwards gather each block's weights."""
    net = model if is_sharded(model) else accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    total = summed_loss(net, ds, collate, batch_size, loss_fn, accelerator.autocast, accelerator.device,
                        (accelerator.process_index, accelerator.num_processes))
    net.train(was_training)
    loss_sum, n = accelerator.reduce(total, "sum").tolist()
    return loss_sum / n


def validate(s: TrainSetup, model, adapter, progress: Progress, records: Records, steps_per_epoch: int) -> dict:
    """Validation loss, and with train.select_by a ROUGE key the ROUGE of the fixed validation
    subset (training.selection); on improvement of the selection score (the loss: lower is better;
    ROUGE: higher; a tie keeps the earlier) the weights go to RUN/adapter, else count towards
    patience. The first train.log_predictions decodes go to the trackers' tables (selecting by loss,
    `s.samples` decodes them, timed as samples_seconds). Returns the validation event written to
    metrics.jsonl."""
    accelerator, cfg = s.accelerator, s.cfg
    val = validation_loss(accelerator, model, s.loss_fn, s.val_ds, s.collate, cfg.train.batch_size)
    rouge = s.selection.score(model, s.data["validation"]) if s.selection is not None else {}
    if rouge:
        score = rouge[cfg.train.select_by]
        improved = progress.best_score is None or score > progress.best_score
    else:
        improved = progress.best_val_loss is None or val < progress.best_val_loss
    if improved:
        progress.best_val_loss, progress.best_step, progress.bad_evals = val, progress.step, 0
        if rouge:
            progress.best_score = score
        if is_sharded(model):  # a collective: every process gathers, the main one writes
            save_gathered(s.method, model, adapter, s.meta, accelerator.is_main_process)
        elif accelerator.is_main_process:
            s.method.save(accelerator.unwrap_model(model), adapter, s.meta)
    else:
        progress.bad_evals += 1
        progress.early_stopped = progress.bad_evals >= cfg.train.patience
    event = {"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 4),
             "split": "validation", "loss": val, "best": improved, **rouge}
    samples = s.selection.examples if rouge else []
    if s.samples is not None:  # selecting by loss: decode the few rows of the trackers' table
        t0 = time.perf_counter()
        s.samples.decode(model, s.data["validation"])
        samples = s.samples.examples
        event["samples_seconds"] = time.perf_counter() - t0
    records.write(event)
    records.samples(progress.step, samples[:cfg.train.log_predictions])
    return event
