"""What a run reports while and after it trains: metrics.jsonl, the progress bar and epoch
lines, results.json, and the Ctrl-C/SIGTERM request to stop at a step boundary."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from sumtune import progress as progress_bars
from sumtune.io import atomic_write_json, writing
from sumtune.training.budget import budget_of, budget_record
from sumtune.training.sharding import distributed_record
from sumtune.training.state import Progress, TrainSetup
from sumtune.training.trackers import Trackers


class Records:
    """RUN/metrics.jsonl, one JSON object per event, appended and flushed (main process only);
    opened cut back to `offset` bytes, its length at the checkpoint being resumed. Every event
    also goes to the experiment trackers (`training.trackers`), the same numbers at the same step."""

    def __init__(self, path: Path, offset: int, active: bool, trackers: Trackers | None = None):
        self.active, self.path, self.trackers = active, path, trackers
        if active:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a+b") as f:
                    f.truncate(offset)
                self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def write(self, event: dict[str, Any]) -> None:
        if self.active:
            with writing(self.path):
                self.f.write(json.dumps(event) + "\n")
                self.f.flush()
            if self.trackers is not None:
                self.trackers.log(event)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample predictions of the validation at `step`, for the trackers' tables (not metrics.jsonl)."""
        if self.active and self.trackers is not None:
            self.trackers.table(step, rows)

    def offset(self) -> int:
        """Bytes written so far, on disk."""
        if not self.active:
            return 0
        with writing(self.path):
            self.f.flush()
            os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        if self.active and not self.f.closed:
            self.f.close()


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to checkpoint at the next step boundary and stop;
    a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step with a resumable checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` is set in any process (a stop request must stop all of them alike)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(t, "sum").item() > 0)


def epoch_bar(desc: str, total: int, initial: int, main: bool):
    return progress_bars.bar(desc, total, "step", initial=initial, enabled=main)


def epoch_label(epoch: int, total: int, steps_per_epoch: int) -> str:
    """The progress bar's label for `epoch` (0-based) of a run of `total` steps: "epoch E/N", or,
    when the run ends inside its first epoch, its steps and the fraction of an epoch they cover
    ("8 steps (0.016 of an epoch)"), not "epoch 1/1"."""
    if total < steps_per_epoch:
        return f"{total} step{'s' if total != 1 else ''} ({total / steps_per_epoch:.3g} of an epoch)"
    return f"epoch {epoch + 1}/{math.ceil(total / steps_per_epoch)}"


def _part(done: int, steps_per_epoch: int | None) -> str:
    """" (8 of its 500 steps, 0.016 of the epoch)" for an epoch left before its end, else ""."""
    if not steps_per_epoch or done >= steps_per_epoch:
        return ""
    return f" ({done} of its {steps_per_epoch} steps, {done / steps_per_epoch:.3g} of the epoch)"


def epoch_summary(epoch: int, n_epochs: int, progress: Progress, val: dict | None, bar, select_by: str = "loss",
                  steps: tuple[int, int] | None = None) -> None:
    """The epoch's line; `val`: its last validation event (with the selection score, if any);
    `steps`: (steps run in the epoch, steps per epoch), to say how much of an epoch ran when it
    stopped before its end (max steps, a budget, early stopping, a stop request)."""
    train_loss = progress.epoch_loss / progress.epoch_targets if progress.epoch_targets else float("nan")
    line = f"epoch {epoch}/{n_epochs}{_part(*steps) if steps else ''}: train loss {train_loss:.4f}"
    if val is not None:
        line += f", val loss {val['loss']:.4f}"
        if select_by != "loss" and select_by in val:
            line += f", val {select_by} {100 * val[select_by]:.2f} (n={val['select_n']})"
        line += " (best)" if progress.best_step == progress.step else ""
    line += f", {progress.tokens / max(progress.step_seconds, 1e-9):.0f} tok/s, step {progress.step}"
    if progress.early_stopped:
        line += f"; early stop: no improvement in {progress.bad_evals} validations"
    bar.write(line)


def write_results(s: TrainSetup, path: Path, progress: Progress, epochs: float, memory_kind: str,
                  trained: bool = True) -> None:
    """results.json: train_seconds counts optimizer steps only; validation and checkpoint
    writing are timed apart, and wall_seconds is the whole loop; train_flops is the model FLOPs
    count (sumtune.flops) and `budget` what a budget run spent and reached (None without one)."""
    cfg, meta, trainable, total = s.cfg, s.meta, s.trainable, s.total
    epochs = round(epochs, 3)
    atomic_write_json(path, {
        "method": cfg.method.name, "base_model": meta["base_model"], "data": meta.get("data"),
        "data_sizes": (meta.get("data") or {}).get("sizes"), "trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total,
        "train_seconds": progress.step_seconds, "validation_seconds": progress.validation_seconds,
        "checkpoint_seconds": progress.checkpoint_seconds, "wall_seconds": progress.train_seconds,
        "epochs_run": int(epochs) if epochs == int(epochs) else epochs,
        "steps": progress.step, "best_val_loss": progress.best_val_loss, "best_step": progress.best_step,
        "select_by": cfg.train.select_by, "best_score": progress.best_score,  # best_val_loss: the loss at best_step
        "peak_memory_mb": progress.peak_memory_mb, "peak_memory_kind": memory_kind,
        "tokens_per_s": progress.tokens / progress.step_seconds if progress.step_seconds else None,
        "early_stopped": progress.early_stopped, "precision": s.precision, "processes": s.accelerator.num_processes, "fast_paths": s.fast_paths,
        "distributed": distributed_record(s.accelerator, s.fsdp),
        "train_flops": progress.flops, "budget": budget_record(budget_of(cfg.train), progress, epochs, trained),
        "finished": True,
    })
