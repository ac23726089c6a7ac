"""Validation during training: the token-weighted loss of a split and early stopping, which
keeps the best weights in RUN/adapter."""

from __future__ import annotations

import torch

from sumtune.training.records import Records
from sumtune.training.state import Progress, TrainSetup
from sumtune.training.step import rows_of


@torch.no_grad()
def summed_loss(model, ds, collate, batch_size: int, loss_fn, autocast, device: torch.device,
                shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """[summed token loss, target tokens] (float64) over shard (rank, processes) of a tokenised
    split: every P-th row, longest first to pad little. The one dataset-loss loop, for
    validation and for `evaluate`."""
    lengths = [len(x) for x in ds["input_ids"]]
    order = sorted(range(len(ds)), key=lambda i: -lengths[i])[shard[0]::shard[1]]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows_of(ds, order[start:start + batch_size])).items()}
        with autocast():
            loss, n = loss_fn(model, batch)
        total += torch.tensor([float(loss), n], dtype=torch.float64, device=device)
    return total


def validation_loss(accelerator, model, loss_fn, ds, collate, batch_size: int) -> float:
    """Token-weighted loss over the split: each process scores its shard with the unwrapped
    model, so no collective runs per batch, then one sum over processes."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    total = summed_loss(net, ds, collate, batch_size, loss_fn, accelerator.autocast, accelerator.device,
                        (accelerator.process_index, accelerator.num_processes))
    net.train(was_training)
    loss_sum, n = accelerator.reduce(total, "sum").tolist()
    return loss_sum / n


def validate(s: TrainSetup, model, adapter, progress: Progress, records: Records, steps_per_epoch: int) -> float:
    """Validation loss; on improvement the weights go to RUN/adapter, else count towards patience."""
    accelerator, cfg = s.accelerator, s.cfg
    val = validation_loss(accelerator, model, s.loss_fn, s.val_ds, s.collate, cfg.train.batch_size)
    improved = progress.best_val_loss is None or val < progress.best_val_loss
    if improved:
        progress.best_val_loss, progress.best_step, progress.bad_evals = val, progress.step, 0
        if accelerator.is_main_process:
            s.method.save(accelerator.unwrap_model(model), adapter, s.meta)
    else:
        progress.bad_evals += 1
        progress.early_stopped = progress.bad_evals >= cfg.train.patience
    records.write({"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 4),
                   "split": "validation", "loss": val, "best": improved})
    if cfg.train.tensorboard:
        accelerator.log({"validation/loss": val}, step=progress.step)
    return val
