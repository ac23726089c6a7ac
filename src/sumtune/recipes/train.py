"""`sumtune train`: one loop for every method, on Hugging Face Accelerate.

Read top to bottom: `train` locks and checks the run directory and builds the run with
`training.setup` (data, model, method, fast paths and the loss; every input checked before
anything is written); `_train` adds AdamW and its schedule, resumes from the newest good
checkpoint and runs the loop, `_Loop.fit`; then results.json (`training.records`). The loop:

    for each epoch (its order depends only on (seed, epoch): a resumed run goes on mid-epoch)
        for each optimizer step                                        (_Loop.step)
            this process's micro-batches of the step's samples         data.batching
            forward/backward each, exact accumulation, clip, update    training.step.optimizer_step
              on `s.loss_fn`, the token loss (training.step.token_loss_sum, or its exact fast
              path fastpath/loss.py: `setup` picks it once)
            record the step                                            training.records
            validate (epoch end, train.eval_steps): the loss, ROUGE    training.validation
              with train.select_by; the best weights kept; early stopping
            checkpoint: epoch end, train.save_steps, a stop request    training.resume

A method that does not train (zero_shot) records its validation loss only (`_zero_shot`); a method
without a model (lead3) only its run directory (`_without_model`).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from sumtune.checkpoint import list_checkpoints
from sumtune.config import Config, save_config
from sumtune.data import load_splits, micro_batches, token_batches
from sumtune.errors import UserError
from sumtune.fingerprints import data_fingerprint
from sumtune.io import WriteError, atomic_write_json, atomic_write_text
from sumtune.lock import DirLock, is_main_process
from sumtune.memory import PeakMemory
from sumtune.methods import get_method
from sumtune.runs import RunDir, modelless_meta
from sumtune.training.budget import BudgetSchedule, StepFlops, budget_of, budget_record, flops_steps
from sumtune.training.records import (
    Records,
    StopOnSignal,
    any_process,
    epoch_bar,
    epoch_label,
    epoch_summary,
    write_results,
)
from sumtune.training.resume import (
    check_run_dir,
    remove_failed_start,
    restore,
    save_state,
    warn_if_short_of_space,
)
from sumtune.training.sharding import shard
from sumtune.training.state import (
    Progress,
    StepPlan,
    TrainSetup,
    accelerator_for,
    make_optimizer,
    plan_steps,
    setup,
)
from sumtune.training.step import oom_error, optimizer_step
from sumtune.training.trackers import Trackers, tracker_names
from sumtune.training.validation import validate, validation_loss


def train(cfg: Config, resume: bool = False) -> Path:
    """Train `cfg.method` on `cfg.data` into the run directory `cfg.output_dir`; returns it.
    With `resume`, continue the run there from its newest good checkpoint."""
    run = RunDir(cfg.output_dir)
    if resume and run.is_finished():
        print(f"{run}: the run finished earlier; nothing to resume")
        return run.path
    if not get_method(cfg.method.name).needs_model:
        return _without_model(cfg, run, resume)
    accelerator, precision = accelerator_for(cfg, run.path)
    main = accelerator.is_main_process
    created = not run.path.exists()
    with DirLock(run.path):  # one writer per run directory (the main process holds it)
        try:
            check_run_dir(run, cfg, resume)
        except UserError:
            if created and main:
                remove_failed_start(run, created)  # only the lock file is ours
            raise
        memory = PeakMemory(accelerator.device).start()  # this run's own peak, not the process's
        try:
            s = setup(cfg, accelerator, precision)
            if main and not resume:  # a resumed run's config is rewritten once its checkpoint is accepted
                save_config(cfg, run.config)
            return _zero_shot(s, run, memory) if not s.method.trains else _train(s, run, resume, memory)
        except BaseException:
            if not resume and main:
                remove_failed_start(run, created)
            raise
        finally:
            memory.stop()


def _zero_shot(s: TrainSetup, run: RunDir, memory: PeakMemory) -> Path:
    """Nothing trains: the base model's validation loss and its metadata."""
    s.model.to(s.accelerator.device)  # no DDP wrapper
    t0 = time.perf_counter()
    val = validation_loss(s.accelerator, s.model, s.loss_fn, s.val_ds, s.collate, s.cfg.train.batch_size)
    done = Progress(best_val_loss=val, peak_memory_mb=memory.peak_mb(), validation_seconds=time.perf_counter() - t0)
    trackers = Trackers(s.accelerator, s.cfg, run.path, tracker_names(s.cfg.train))
    trackers.start(resume=False)
    try:
        if s.accelerator.is_main_process:
            trackers.log({"step": 0, "split": "validation", "loss": val})
            s.method.save(s.model, run.adapter, s.meta)
            write_results(s, run.results, done, 0, memory.kind, trained=False)
    finally:
        trackers.finish()
    s.accelerator.print(f"{run}: zero_shot, validation loss {val:.4f} (no training"
                        + (", so no budget spent" if budget_of(s.cfg.train) else "") + f"); results in {run.results}")
    return run.path


def _without_model(cfg: Config, run: RunDir, resume: bool) -> Path:
    """A method without a model (lead3): nothing loads or trains. The data is read and checked as for
    training, and the run directory records the method and the data (the base model by name only), so
    that evaluate and compare treat the baseline like any other run."""
    method, main = get_method(cfg.method.name), is_main_process()
    created = not run.path.exists()
    with DirLock(run.path):
        try:
            check_run_dir(run, cfg, resume)
            t0 = time.perf_counter()
            splits = load_splits(cfg.data, cfg.data.seed)  # the data's problems show as a training run's do
            data = {"source": cfg.data.source, "sizes": {k: len(v) for k, v in splits.items()},
                    "fingerprint": data_fingerprint(cfg.data)}
            meta = modelless_meta(cfg, data=data)
            if main:
                save_config(cfg, run.config)
                method.save(None, run.adapter, meta)
                atomic_write_text(run.metrics, "")  # nothing trains: no event
                atomic_write_json(run.results, {
                    "method": method.name, "base_model": meta["base_model"], "data": data,
                    "data_sizes": data["sizes"], "trainable_params": 0, "total_params": None, "trainable_pct": None,
                    "train_seconds": 0.0, "validation_seconds": 0.0, "checkpoint_seconds": 0.0,
                    "wall_seconds": time.perf_counter() - t0, "epochs_run": 0, "steps": 0, "best_val_loss": None,
                    "best_step": 0, "select_by": cfg.train.select_by, "best_score": None, "peak_memory_mb": None,
                    "peak_memory_kind": "no model", "tokens_per_s": None, "early_stopped": False,
                    "precision": None, "processes": 1, "fast_paths": [], "distributed": None, "train_flops": 0,
                    "budget": budget_record(budget_of(cfg.train), Progress(), 0, trained=False), "finished": True,
                })
        except BaseException:
            if main and not resume:
                remove_failed_start(run, created)
            raise
    print(f"{run}: {method.name}, {method.describe(method.options(cfg.method))} (no model loaded, no training); "
          f"results in {run.results}")
    return run.path


def _train(s: TrainSetup, run: RunDir, resume: bool, memory: PeakMemory) -> Path:
    accelerator, cfg = s.accelerator, s.cfg
    plan = plan_steps(cfg, len(s.train_ds), accelerator.num_processes)
    budget = budget_of(cfg.train)
    lengths = [len(x) for x in s.train_ds["input_ids"]]
    counter = StepFlops(s.shape, cfg.method, s.trainable, lengths)
    ahead = (flops_steps(plan, len(lengths), lengths if cfg.data.group_by_length else None, counter, budget.limit)
             if budget and budget.kind == "flops" else 0)  # a FLOPs budget's last step, known exactly
    schedule = BudgetSchedule(cfg.train, budget, plan.total, ahead) if budget else None
    s.model.train()  # from_pretrained returns eval mode; dropout (e.g. LoRA's) belongs to training
    if s.fsdp["fsdp"]:  # sharded before the optimizer is built, so AdamW holds the shards (training.sharding)
        model = shard(s.model, accelerator, s.fsdp["offload"])
        optimizer, scheduler = make_optimizer(model, s.method, cfg.train, s.fast_paths, plan.total, schedule)
        optimizer = accelerator.prepare(optimizer)
    else:
        optimizer, scheduler = make_optimizer(s.model, s.method, cfg.train, s.fast_paths, plan.total, schedule)
        model, optimizer = accelerator.prepare(s.model, optimizer)
    progress = Progress(samples_per_step=plan.per_step, micro_samples=plan.micro, schedule_steps=ahead)
    if resume:
        progress = restore(s, run, plan, model, optimizer, scheduler) or progress
        if accelerator.is_main_process:
            save_config(cfg, run.config)  # differs at most in keys that leave the optimisation as it was
    trackers = Trackers(accelerator, cfg, run.path, tracker_names(cfg.train))
    records = Records(run.metrics, progress.metrics_offset, accelerator.is_main_process, trackers)
    accelerator.print(f"{run}: training {s.method.name}, {s.trainable:,} of {s.total:,} parameters, "
                      f"{len(s.train_ds)} samples, {plan.steps_per_epoch} steps/epoch of {plan.per_step} samples, "
                      f"{plan.total} steps, {s.precision}" + (f", from step {progress.step}" if progress.step else ""))
    if accelerator.is_main_process:
        warn_if_short_of_space(run, s.trainable)
    loop = _Loop(s, run, plan, model, optimizer, scheduler, progress, records, memory, counter, schedule)
    if budget:
        accelerator.print(f"{run}: budget {budget.text()}" + (f", reached at step {progress.schedule_steps}"
                          if budget.kind == "flops" else "") + "; warmup and decay fit the budget")
    try:
        trackers.start(resume)
        with StopOnSignal() as stop:
            loop.fit(stop)
        progress.peak_memory_mb = max(progress.peak_memory_mb, memory.peak_mb())
        if accelerator.is_main_process:
            records.offset()
            write_results(s, run.results, progress, progress.step / plan.steps_per_epoch, memory.kind)
    except WriteError as e:
        raise _write_failed(e, run) from None
    finally:
        records.close()
        trackers.finish()
    if accelerator.is_main_process:
        shutil.rmtree(run.checkpoints, ignore_errors=True)  # the run is complete: nothing to resume
        chosen = (f"best validation {cfg.train.select_by} {100 * progress.best_score:.2f} (loss "
                  f"{progress.best_val_loss:.4f})" if progress.best_score is not None
                  else f"best validation loss {progress.best_val_loss:.4f}")
        accelerator.print(f"{run}: {chosen} at step {progress.best_step}"
                          + (" (early stopped)" if progress.early_stopped else "")
                          + (f" (budget spent: {budget.text()})" if progress.stopped_by_budget else "")
                          + f"; weights in {run.adapter}")
    accelerator.wait_for_everyone()
    return run.path


class _Loop:
    """The training loop of one run (`fit`) and what one step does (`step`)."""

    def __init__(self, s: TrainSetup, run: RunDir, plan: StepPlan, model, optimizer, scheduler,
                 progress: Progress, records: Records, memory: PeakMemory, flops: StepFlops,
                 schedule: BudgetSchedule | None = None):
        self.s, self.run, self.plan, self.model = s, run, plan, model
        self.optimizer, self.scheduler, self.progress, self.records, self.memory = optimizer, scheduler, progress, records, memory
        self.trained = [p for p in model.parameters() if p.requires_grad]
        lengths = flops.lengths
        self.lengths = lengths if s.cfg.data.group_by_length else None
        self.row_lengths = lengths  # for train.max_tokens_per_batch
        self.train_ds = s.train_ds
        self.clock = time.perf_counter()
        self.flops, self.schedule = flops, schedule
        if schedule is not None:
            schedule.progress = progress

    def fit(self, stop: StopOnSignal) -> None:
        """Optimizer steps until the planned total, early stopping, a spent budget or a stop request
        (a checkpoint, then KeyboardInterrupt)."""
        p, plan, tc, main = self.progress, self.plan, self.s.cfg.train, self.s.accelerator.is_main_process
        while p.step < plan.total and not p.early_stopped and not p.stopped_by_budget:
            epoch, first, last = plan.epoch_bounds(p.step)  # the next step's epoch, its first and end steps
            order = plan.order(len(self.train_ds), epoch, self.lengths)
            val = None
            label = epoch_label(epoch, plan.total, plan.steps_per_epoch)
            with epoch_bar(label, last - first, p.step - first, main) as bar:
                while p.step < last and not p.early_stopped and not p.stopped_by_budget:
                    k = p.step - first
                    event = self.step(order[k * plan.per_step:(k + 1) * plan.per_step], epoch)
                    p.stopped_by_budget = self.schedule is not None and self.schedule.budget.reached(p)
                    bar.update(1)
                    bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}",
                                    tok_s=f"{event['tokens_per_s']:.0f}", refresh=False)
                    if p.step == last or p.stopped_by_budget or (tc.eval_steps and p.step % tc.eval_steps == 0):
                        val = self.validate()
                    stopping = any_process(self.s.accelerator, stop.requested)
                    self.maybe_checkpoint(at_end=p.step == last, stopping=stopping)
                if main:
                    epoch_summary(epoch + 1, plan.epochs, p, val, bar, tc.select_by,
                                  (p.step - first, plan.steps_per_epoch))
            p.epoch_loss, p.epoch_targets = 0.0, 0
        p.train_seconds += time.perf_counter() - self.clock

    def step(self, chunk: list[int], epoch: int) -> dict:
        """One optimizer step over `chunk` (the step's sample indices): this process's micro-batches,
        forward/backward with exact accumulation, clip, update; then its counts, and its event
        recorded and returned."""
        s, p, tc = self.s, self.progress, self.s.cfg.train
        args = (self.train_ds, chunk, tc.batch_size, self.plan.world, s.accelerator.process_index, s.collate)
        batches = (token_batches(*args, tc.max_tokens_per_batch, self.row_lengths) if tc.max_tokens_per_batch
                   else micro_batches(*args))
        flops = self.flops(chunk)
        if self.schedule is not None:
            self.schedule.pending_flops = flops
        t0 = time.perf_counter()
        try:
            r = optimizer_step(s.accelerator, self.model, self.optimizer, self.scheduler, s.loss_fn, batches,
                               self.trained, tc.max_grad_norm)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            raise oom_error(e, s.cfg, p.step + 1) from None
        seconds = time.perf_counter() - t0
        p.step += 1
        if not math.isfinite(r.loss) or not math.isfinite(r.grad_norm) and s.precision != "fp16":
            what = f"training loss is {r.loss}" if not math.isfinite(r.loss) else f"gradient norm is {r.grad_norm}"
            raise UserError(f"{what} at step {p.step} (epoch {epoch + 1}); stopped. The best weights so far are in "
                            f"{self.run.adapter}; lower --lr or use --precision fp32")
        if self.schedule is not None and self.schedule.budget.kind == "seconds" and self.plan.world > 1:
            seconds = _slowest(s.accelerator, seconds)  # every process stops at the same step, at the same rate
        p.step_seconds += seconds
        p.last_step_seconds = seconds
        p.flops += flops
        if self.schedule is not None and self.schedule.budget.kind == "seconds":
            p.schedule_steps = p.step
        p.tokens += r.tokens
        p.epoch_loss += r.loss * r.targets
        p.epoch_targets += r.targets
        event = {"step": p.step, "epoch": round(p.step / self.plan.steps_per_epoch, 4), "split": "train",
                 "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "tokens": r.tokens,
                 "tokens_per_s": r.tokens / seconds}
        self.records.write(event)
        return event

    def validate(self) -> dict:
        """The validation event; its time, selection decoding included, counts in validation_seconds."""
        t0 = time.perf_counter()
        val = validate(self.s, self.model, self.run.adapter, self.progress, self.records, self.plan.steps_per_epoch)
        self.progress.validation_seconds += time.perf_counter() - t0
        return val

    def maybe_checkpoint(self, at_end: bool, stopping: bool) -> None:
        """A checkpoint at an epoch end, every train.save_steps, and on a stop request (then stop)."""
        p, save_steps = self.progress, self.s.cfg.train.save_steps
        done = p.step == self.plan.total or p.early_stopped or p.stopped_by_budget
        if done or not (at_end or stopping or (save_steps and p.step % save_steps == 0)):
            return
        now = time.perf_counter()
        p.train_seconds += now - self.clock
        self.clock = now
        p.metrics_offset = self.records.offset()
        p.peak_memory_mb = max(p.peak_memory_mb, self.memory.peak_mb())
        path = save_state(self.s, self.run, self.model, self.optimizer, self.scheduler, p)
        p.checkpoint_seconds += time.perf_counter() - now
        if stopping:
            self.s.accelerator.print(f"interrupted after step {p.step}: resumable checkpoint {path}; continue with "
                                     f"`sumtune train --config {self.run.config} --resume`")
            raise KeyboardInterrupt


def _slowest(accelerator, seconds: float) -> float:
    return float(accelerator.reduce(torch.tensor([seconds], dtype=torch.float64, device=accelerator.device), "max"))


def _write_failed(e: WriteError, run: RunDir) -> UserError:
    """A failed write during training (checkpoint, best weights, records, results), said with
    what is safe and how to continue."""
    kept = list_checkpoints(run.checkpoints)
    resume = (f"the last good checkpoint is {kept[-1]}: free space and resume with "
              f"`sumtune train --config {run.config} --resume`") if kept else "no checkpoint was written yet"
    return UserError(f"{e}; the best weights so far are in {run.adapter}; {resume}")
