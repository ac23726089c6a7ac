"""The training loop: one loop for every method, on Hugging Face Accelerate.

Read top to bottom, `train` does: check the run directory -> load data, model and
method -> AdamW + schedule -> (resume from the newest good checkpoint) -> optimizer
steps with exact accumulation, validation, early stopping, checkpoints -> results.

Exactness, the three properties the tests check:
- Accumulation. One optimizer step takes the next `batch_size x processes x grad_accum`
  samples of the epoch order. Its loss is the sum of token cross-entropies over all
  of them divided by their total number of target tokens (counted before the forward
  passes and summed over processes), never a mean of per-micro-batch means, so
  batch 1 x accumulation 4 and batch 4 x accumulation 1 give the same gradient.
- Processes. Micro-batch m of process r is the step's slice [m*B*P + r*B, +B); DDP
  averages gradients over the P processes, so the loss is multiplied by P. A process
  left without samples at the end of an epoch runs a filler: a real sample through the
  same forward/backward with its loss times 0 (zero gradients, not counted), so every
  process makes the same collective calls whatever the loss function skips.
- Resume. The sample order depends only on (seed, epoch), so the data position is the
  number of optimizer steps done. A checkpoint holds that step, the trainable weights,
  the optimizer and scheduler, every process's RNG states and the early-stopping state;
  metrics.jsonl is cut back to its length at the checkpoint.

Weight decay applies to weight matrices (Linear/Conv1D/embedding weights, LoRA A/B)
only: not to biases and norms (vectors), nor to a soft prompt, which is an input
rather than a layer weight (decay would pull the virtual tokens towards zero, away
from the scale of real token embeddings).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sumtune import progress
from sumtune.checkpoint import (
    latest_checkpoint,
    optimizer_from_files,
    optimizer_to_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sumtune.config import Config, config_differences, load_run_config, save_config
from sumtune.data import Collator, epoch_order, load_splits, tokenize_splits
from sumtune.errors import UserError
from sumtune.fastpath import fused_adamw, select_loss, speed_up
from sumtune.fingerprints import data_fingerprint
from sumtune.io import atomic_write_json
from sumtune.memory import PeakMemory
from sumtune.methods import get_method
from sumtune.modeling import (
    autocast_dtype,
    count_params,
    load_model,
    load_tokenizer,
    max_positions,
    resolve_precision,
)
from sumtune.runs import is_finished, run_meta

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "checkpoints", "adapter")


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions of a batch, and their number
    (the reference path: full logits)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    loss = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """The number of positions `token_loss_sum` scores in `batch`."""
    return int((batch["labels"][:, 1:] != -100).sum())


@dataclass
class Progress:
    """Everything besides weights, optimizer and RNG that a resumed run needs (state.json)."""

    step: int = 0  # optimizer steps done; with the seed, also the position in the data order
    samples_per_step: int = 0  # batch_size x processes x grad_accum
    micro_samples: int = 0  # batch_size x processes
    best_val_loss: float | None = None
    best_step: int = 0
    bad_evals: int = 0  # validations in a row without improvement
    early_stopped: bool = False
    train_seconds: float = 0.0  # wall time of the training loop (steps, validation, checkpoints)
    step_seconds: float = 0.0  # time spent in optimizer steps (for tokens/s)
    validation_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    tokens: int = 0  # input tokens trained on (no padding), all processes
    epoch_loss: float = 0.0  # this epoch's summed target-token loss so far
    epoch_targets: int = 0
    peak_memory_mb: float = 0.0
    metrics_offset: int = 0  # bytes of metrics.jsonl written at this point


def train(cfg: Config, resume: bool = False) -> Path:
    """Train `cfg.method` on `cfg.data` into the run directory `cfg.output_dir`; returns it.
    With `resume`, continue the run there from its newest good checkpoint."""
    run = Path(cfg.output_dir)
    if resume and is_finished(run):
        print(f"{run}: the run finished earlier; nothing to resume")
        return run
    _check_run_dir(run, cfg, resume)
    accelerator, precision = _accelerator(cfg, run)
    memory = PeakMemory(accelerator.device).start()  # this run's own peak, not the process's
    created = not run.exists()
    try:
        return _train(cfg, run, resume, accelerator, precision, memory)
    except BaseException:
        if not resume and accelerator.is_main_process:
            _remove_failed_start(run, created)
        raise
    finally:
        memory.stop()


def _train(cfg: Config, run: Path, resume: bool, accelerator, precision: str, memory: PeakMemory) -> Path:
    main, world, tc = accelerator.is_main_process, accelerator.num_processes, cfg.train
    from accelerate.utils import set_seed

    set_seed(tc.seed)  # the same initialisation (LoRA, soft prompt) in every process

    # --- data, model and method: every input is checked before the run directory is written
    tokenizer = load_tokenizer(cfg.model.name)
    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        data = tokenize_splits(load_splits(cfg.data, tc.seed), tokenizer, cfg.data)
    train_ds, val_ds = (data[s].select_columns(["input_ids", "labels"]) for s in ("train", "validation"))
    collate = Collator(tokenizer.pad_token_id)
    base = load_model(cfg.model.name)
    check_max_length(cfg, base.config)
    meta = run_meta(cfg, base, data={"source": cfg.data.source, "sizes": {s: len(data[s]) for s in data},
                                     "fingerprint": data_fingerprint(cfg.data)})
    method = get_method(cfg.method.name)
    model = method.prepare(base, tokenizer, cfg.method)
    speed_up(model, tc.fast, cfg.model.attention, autocast_dtype(precision))  # fastpath/: each measured
    trainable, total = count_params(model)
    if main and not resume:  # a resumed run's config is rewritten once its checkpoint is accepted
        save_config(cfg, run / "config.yaml")
    loss_fn = select_loss(model, token_loss_sum, tc.fast, distributed=world > 1)

    if not method.trains:  # zero_shot: the base model's validation loss and its metadata, no training
        model.to(accelerator.device)  # nothing trains: no DDP wrapper
        t0 = time.perf_counter()
        val = _validation_loss(accelerator, model, loss_fn, val_ds, collate, tc.batch_size)
        done = Progress(best_val_loss=val, peak_memory_mb=memory.peak_mb(),
                        validation_seconds=time.perf_counter() - t0)
        if main:
            method.save(model, run / "adapter", meta)
            _write_results(run, cfg, meta, trainable, total, precision, done, 0, world, memory.kind)
        accelerator.print(f"{run}: zero_shot, validation loss {val:.4f} (no training)")
        return run

    # --- optimisation
    micro = tc.batch_size * world  # samples per micro-step, all processes
    per_step = micro * tc.grad_accum  # samples per optimizer step
    steps_per_epoch = math.ceil(len(train_ds) / per_step)
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    lengths = [len(x) for x in train_ds["input_ids"]] if cfg.data.group_by_length else None
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, fused=fused_adamw(tc.fast))
    # warmup's first step has rate 0: leave at least one step after it (--max-steps 1 must train)
    warmup = min(math.ceil(tc.warmup_ratio * total_steps), total_steps - 1)
    scheduler = _scheduler(optimizer, tc.scheduler, warmup, total_steps)
    model.train()  # from_pretrained returns eval mode; dropout (e.g. LoRA's) belongs to training
    model, optimizer = accelerator.prepare(model, optimizer)
    trained = [p for p in model.parameters() if p.requires_grad]

    progress = Progress(samples_per_step=per_step, micro_samples=micro)
    if resume:
        progress = _restore(accelerator, run, cfg, model, optimizer, scheduler, method, meta) or progress
        if main:
            save_config(cfg, run / "config.yaml")  # differs at most in RESUME_FREE keys and batch x accumulation
    records = Records(run / "metrics.jsonl", progress.metrics_offset, main)
    if tc.tensorboard:
        accelerator.init_trackers("tensorboard")

    # --- the loop
    accelerator.print(f"{run}: training {method.name}, {trainable:,} of {total:,} parameters, {len(train_ds)} samples, "
                      f"{steps_per_epoch} steps/epoch of {per_step} samples, {total_steps} steps, {precision}"
                      + (f", from step {progress.step}" if progress.step else ""))
    clock = time.perf_counter()
    bar = None
    try:
        with _StopOnSignal() as stop:
            while progress.step < total_steps and not progress.early_stopped:
                epoch = progress.step // steps_per_epoch
                first, last = epoch * steps_per_epoch, min((epoch + 1) * steps_per_epoch, total_steps)
                order = epoch_order(len(train_ds), tc.seed, epoch, lengths, cfg.data.group_by_length, micro)
                bar = _bar(f"epoch {epoch + 1}/{n_epochs}", last - first, progress.step - first, main)
                val = None
                while progress.step < last:
                    k = progress.step - first
                    batches = micro_batches(train_ds, order[k * per_step:(k + 1) * per_step], tc.batch_size,
                                            world, accelerator.process_index, collate)
                    t0 = time.perf_counter()
                    try:
                        loss, n_targets, n_tokens, grad_norm, lr = optimizer_step(
                            accelerator, model, optimizer, scheduler, loss_fn, batches, trained, tc.max_grad_norm)
                    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                        raise _oom_error(e, cfg, progress.step + 1) from None
                    seconds = time.perf_counter() - t0
                    progress.step += 1
                    if not math.isfinite(loss) or not math.isfinite(grad_norm) and precision != "fp16":
                        what = f"training loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
                        raise UserError(
                            f"{what} at step {progress.step} (epoch {epoch + 1}); stopped. "
                            f"The best weights so far are in {run / 'adapter'}; lower --lr or use --precision fp32")
                    progress.step_seconds += seconds
                    progress.tokens += n_tokens
                    progress.epoch_loss += loss * n_targets
                    progress.epoch_targets += n_targets
                    event = {"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 4),
                             "split": "train", "loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens_per_s": n_tokens / seconds}
                    records.write(event)
                    if tc.tensorboard:
                        accelerator.log({f"train/{k}": event[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s")},
                                        step=progress.step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{n_tokens / seconds:.0f}", refresh=False)

                    at_end = progress.step == last
                    if at_end or (tc.eval_steps and progress.step % tc.eval_steps == 0):
                        t0 = time.perf_counter()
                        val = _validate(accelerator, model, loss_fn, val_ds, collate, cfg, method, meta, run,
                                        progress, records, steps_per_epoch)
                        progress.validation_seconds += time.perf_counter() - t0
                    stopping = _any_process(accelerator, stop.requested)
                    done = progress.step == total_steps or progress.early_stopped
                    if not done and (at_end or stopping or (tc.save_steps and progress.step % tc.save_steps == 0)):
                        now = time.perf_counter()
                        progress.train_seconds += now - clock
                        clock = now
                        progress.metrics_offset = records.offset()
                        progress.peak_memory_mb = max(progress.peak_memory_mb, memory.peak_mb())
                        path = _save(accelerator, run, model, optimizer, scheduler, method, progress, meta)
                        progress.checkpoint_seconds += time.perf_counter() - now
                        if stopping:
                            bar.close()
                            accelerator.print(f"interrupted after step {progress.step}: resumable checkpoint {path}; "
                                              f"continue with `sumtune train --config {run / 'config.yaml'} --resume`")
                            raise KeyboardInterrupt
                    if progress.early_stopped:
                        break
                bar.close()
                if main:
                    _epoch_summary(epoch + 1, n_epochs, progress, val, bar)
                progress.epoch_loss, progress.epoch_targets = 0.0, 0
    finally:
        if bar is not None:
            bar.close()  # also when an error stops training mid-epoch
        if tc.tensorboard:
            accelerator.end_training()

    # --- records
    progress.train_seconds += time.perf_counter() - clock
    progress.peak_memory_mb = max(progress.peak_memory_mb, memory.peak_mb())
    if main:
        records.offset()
        _write_results(run, cfg, meta, trainable, total, precision, progress, progress.step / steps_per_epoch, world,
                       memory.kind)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)  # the run is complete: nothing to resume
        accelerator.print(f"{run}: best validation loss {progress.best_val_loss:.4f} at step {progress.best_step}"
                          + (" (early stopped)" if progress.early_stopped else "") + f"; weights in {run / 'adapter'}")
    accelerator.wait_for_everyone()
    return run


# --- one optimizer step -----------------------------------------------------


def micro_batches(ds, chunk: list[int], batch_size: int, world: int, rank: int,
                  collate) -> list[tuple[dict, bool]]:
    """This process's micro-batches for one optimizer step over `chunk` (the step's sample
    indices in order), as (batch, counts): micro-batch m is the slice [m*B*P + rank*B, +B).
    A slice left empty at the end of an epoch becomes a filler (the step's first sample,
    counts=False), so every process steps alike."""
    micro = batch_size * world
    out = []
    for start in range(0, len(chunk), micro):
        mine = chunk[start + rank * batch_size:start + (rank + 1) * batch_size]
        out.append((collate(_rows(ds, mine or chunk[:1])), bool(mine)))
    return out


def _rows(ds, idx: list[int]) -> list[dict[str, list[int]]]:
    cols = ds[idx]
    return [{"input_ids": i, "labels": la} for i, la in zip(cols["input_ids"], cols["labels"])]


# Target tokens per head pass on the whole-step path: logits, their fp32 copy and gradients
# take ~12 bytes x rows x vocab (~0.6 GB at 1024 rows and GPT-2's 50,257 words).
WHOLE_STEP_ROWS = 1024


def _groups_by_targets(batches: list[dict], targets: list[int], limit: int) -> list[list[dict]]:
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


def optimizer_step(accelerator, model, optimizer, scheduler, loss_fn, batches: list[tuple[dict, bool]],
                   trained: list, max_grad_norm: float) -> tuple[float, int, int, float, float]:
    """Forward/backward over this process's micro-batches (`micro_batches`), then clip and step.
    Returns (loss per target token over the whole step, target tokens, input tokens, grad norm, lr)."""
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
        for group in _groups_by_targets([b for b, _ in batches], targets, WHOLE_STEP_ROWS):
            with accelerator.autocast():
                loss, _ = loss_fn.step_loss(model, [{k: v.to(device) for k, v in b.items()} for b in group])
            accelerator.backward(loss * scale)
            loss_sum += loss.detach().double()
    else:
        for i, (batch, counted) in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = i == len(batches) - 1  # gradients are all-reduced once per step
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
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
        return loss, n_targets, n_tokens, float("nan"), lr
    grad_norm = float(accelerator.clip_grad_norm_(trained, max_grad_norm))
    if not math.isfinite(grad_norm) and accelerator.scaler is None:  # fp16's scaler skips such steps itself
        optimizer.zero_grad(set_to_none=True)
        return loss, n_targets, n_tokens, grad_norm, lr
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips steps with inf gradients
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, n_targets, n_tokens, grad_norm, lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight matrices decay; biases, norms and a soft prompt do not (see module doc)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not name.endswith("soft_prompt") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler(optimizer, name: str, warmup: int, total: int):
    from transformers import get_scheduler

    return get_scheduler("constant_with_warmup" if name == "constant" else name, optimizer,
                         num_warmup_steps=warmup, num_training_steps=total)


# --- validation and early stopping ------------------------------------------


@torch.no_grad()
def _validation_loss(accelerator, model, loss_fn, ds, collate, batch_size: int) -> float:
    """Token-weighted loss over the split: each process scores every P-th sample (longest
    first, to pad little) with the unwrapped model, so no collective runs per batch."""
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    lengths = [len(x) for x in ds["input_ids"]]
    order = sorted(range(len(ds)), key=lambda i: -lengths[i])[accelerator.process_index::accelerator.num_processes]
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(accelerator.device) for k, v in collate(_rows(ds, order[start:start + batch_size])).items()}
        with accelerator.autocast():
            loss, n = loss_fn(net, batch)
        total += torch.tensor([float(loss), n], dtype=torch.float64, device=accelerator.device)
    net.train(was_training)
    loss_sum, n = accelerator.reduce(total, "sum").tolist()
    return loss_sum / n


def _validate(accelerator, model, loss_fn, val_ds, collate, cfg: Config, method, meta, run: Path,
              progress: Progress, records: Records, steps_per_epoch: int) -> float:
    """Validation loss; on improvement the weights go to RUN/adapter, else count towards patience."""
    val = _validation_loss(accelerator, model, loss_fn, val_ds, collate, cfg.train.batch_size)
    improved = progress.best_val_loss is None or val < progress.best_val_loss
    if improved:
        progress.best_val_loss, progress.best_step, progress.bad_evals = val, progress.step, 0
        if accelerator.is_main_process:
            method.save(accelerator.unwrap_model(model), run / "adapter", meta)
    else:
        progress.bad_evals += 1
        progress.early_stopped = progress.bad_evals >= cfg.train.patience
    records.write({"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 4),
                   "split": "validation", "loss": val, "best": improved})
    if cfg.train.tensorboard:
        accelerator.log({"validation/loss": val}, step=progress.step)
    return val


# --- checkpoints and resume -------------------------------------------------


def _save(accelerator, run: Path, model, optimizer, scheduler, method, progress: Progress, meta: dict) -> Path | None:
    """A resumable checkpoint at the current step boundary (main process writes; every process's RNG)."""
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()])
    path = None
    if accelerator.is_main_process:
        opt_tensors, opt_meta = optimizer_to_files(optimizer.state_dict())
        weights = {k: v.detach().cpu().clone() for k, v in method.trainable_state(accelerator.unwrap_model(model)).items()}
        files: dict[str, Any] = {
            "trainable.safetensors": weights, "optimizer.safetensors": opt_tensors, "optimizer.json": opt_meta,
            "scheduler.json": scheduler.state_dict(), "state.json": asdict(progress), "sources.json": _sources(meta),
            **{f"rng-{r}.json": s for r, s in enumerate(rngs)},
        }
        path = save_checkpoint(run / "checkpoints", progress.step, files)
    accelerator.wait_for_everyone()
    return path


def _sources(meta: dict) -> dict:
    """What the run trains on, by content: the base model's and the data's fingerprints."""
    return {"base_model": meta["base_model"], "data": meta["data"]["fingerprint"]}


def _check_sources(run: Path, saved: dict, now: dict) -> None:
    """Refuse to resume onto other base weights or changed data (same paths, other content)."""
    if saved["data"].get("sha256") != now["data"].get("sha256"):
        raise UserError(f"cannot resume {run}: the data changed since its checkpoint (content sha256 "
                        f"{str(saved['data'].get('sha256'))[:12]}, now {str(now['data'].get('sha256'))[:12]}); "
                        "restore the data it was trained on or start a new --output-dir")
    if saved["base_model"].get("weights_sha") != now["base_model"].get("weights_sha"):
        raise UserError(f"cannot resume {run}: the base model's weights differ from its checkpoint's "
                        f"({saved['base_model'].get('weights_sha')}, now {now['base_model'].get('weights_sha')}); "
                        "point --model at the model it was trained on or start a new --output-dir")


def _restore(accelerator, run: Path, cfg: Config, model, optimizer, scheduler, method, meta: dict) -> Progress | None:
    """Load the newest good checkpoint into the prepared objects; None when there is none yet."""
    found = latest_checkpoint(run / "checkpoints", warn=log.warning)
    if found is None:
        log.warning("%s has no checkpoint yet; training starts from the beginning", run)
        return None
    path, files = found
    if "sources.json" in files:  # checkpoints before content fingerprints have none
        _check_sources(run, files["sources.json"], _sources(meta))
    state = files["state.json"]
    saved = Progress(**{f.name: state[f.name] for f in fields(Progress) if f.name in state})
    tc, world = cfg.train, accelerator.num_processes
    per_step, micro = tc.batch_size * world * tc.grad_accum, tc.batch_size * world
    if saved.samples_per_step != per_step:
        raise UserError(
            f"cannot resume {run}: a step took {saved.samples_per_step} samples (batch_size x grad_accum x processes), "
            f"now {per_step}; keep that product as it was (e.g. halve --batch-size and double --grad-accum)")
    if cfg.data.group_by_length and saved.micro_samples != micro:
        raise UserError(
            f"cannot resume {run}: with data.group_by_length the order depends on batch_size x processes, "
            f"which was {saved.micro_samples}, now {micro}; keep it as it was")
    params = dict(accelerator.unwrap_model(model).named_parameters())
    weights = files["trainable.safetensors"]
    expected = set(method.trainable_state(accelerator.unwrap_model(model)))
    if set(weights) != expected:
        raise UserError(f"{path}: its weights do not match the model being trained; start a new --output-dir")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(optimizer_from_files(files["optimizer.safetensors"], files["optimizer.json"]))
    scheduler.load_state_dict(files["scheduler.json"])
    # with another number of processes the per-process generators cannot all carry over (dropout masks differ)
    set_rng_state(files.get(f"rng-{accelerator.process_index}.json", files["rng-0.json"]))
    saved.micro_samples = micro
    print(f"resuming {run} from {path.name} (step {saved.step})")
    return saved


def check_max_length(cfg: Config, model_config) -> None:
    """One-line error when a training row cannot fit the model's positions (a soft prompt's
    virtual tokens count too), before anything is written."""
    limit = max_positions(model_config)
    extra = cfg.method.n_tokens if cfg.method.name == "prompt_tuning" else 0
    if limit is not None and cfg.data.max_length + extra > limit:
        what = f"data.max_length {cfg.data.max_length}" + (f" + {extra} soft-prompt tokens" if extra else "")
        raise UserError(f"{what} exceeds the {limit} positions of model {cfg.model.name} "
                        f"({model_config.model_type}); use --max-length {limit - extra} or less")


def _remove_failed_start(run: Path, created: bool) -> None:
    """A run that failed before its first optimizer step leaves nothing behind (its checks
    passed, so only files of this start are there)."""
    if (run / "checkpoints").exists() or is_finished(run):
        return
    if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0:
        return  # it trained: keep what it wrote (best weights, records)
    for name in RUN_FILES:
        path = run / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            run.rmdir()  # only if empty


def _check_run_dir(run: Path, cfg: Config, resume: bool) -> None:
    """Never clobber a run; resume only a run whose optimisation settings are unchanged
    (batch_size x grad_accum may be refactored: the checkpoint checks their product)."""
    present = [f for f in RUN_FILES if (run / f).exists()]
    if not resume:
        if present:
            raise UserError(f"{run} already holds a run ({', '.join(present)}); continue it with --resume "
                            "or pass a new --output-dir")
        return
    if "config.yaml" not in present:
        raise UserError(f"nothing to resume in {run} (no config.yaml); drop --resume to start a new run there")
    diffs = config_differences(load_run_config(run), cfg, ignore=("train.batch_size", "train.grad_accum"))
    if diffs:
        key, old, new = diffs[0]
        raise UserError(
            f"cannot resume {run}: {key} was {old!r}, now {new!r}, which would not continue the "
            f"same training; resume with `sumtune train --config {run / 'config.yaml'} --resume` "
            "or start a new --output-dir")


def _accelerator(cfg: Config, run: Path):
    """(Accelerator, precision): mixed precision from train.precision (fp32 master weights either way)."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    # Without CUDA, run on the CPU: also makes a torchrun-style launch (`accelerate launch --multi_gpu`
    # on a machine without GPUs) a multi-CPU DDP run over gloo instead of P independent runs.
    cpu = not torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, PartialState(cpu=cpu).device)
    mixed = "no" if precision == "fp32" else precision
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()  # an earlier train() in this process used another precision
    if cfg.train.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, log_with="tensorboard" if cfg.train.tensorboard else None,
                              project_dir=str(run))
    if accelerator.distributed_type not in ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        raise UserError(f"distributed type {accelerator.distributed_type} is not supported by sumtune's trainer "
                        "(its checkpoints and best weights assume replicated models); use a DDP launch "
                        "(accelerate launch --multi_gpu) without FSDP/DeepSpeed")
    return accelerator, precision


def _any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(t, "sum").item() > 0)


class Records:
    """RUN/metrics.jsonl, one JSON object per event, appended and flushed (main process only);
    opened cut back to `offset` bytes, its length at the checkpoint being resumed."""

    def __init__(self, path: Path, offset: int, active: bool):
        self.active = active
        if active:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b") as f:
                f.truncate(offset)
            self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def write(self, event: dict[str, Any]) -> None:
        if self.active:
            self.f.write(json.dumps(event) + "\n")
            self.f.flush()

    def offset(self) -> int:
        """Bytes written so far, on disk."""
        if not self.active:
            return 0
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()


class _StopOnSignal:
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

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _bar(desc: str, total: int, initial: int, main: bool):
    return progress.bar(desc, total, "step", initial=initial, enabled=main)


def _epoch_summary(epoch: int, n_epochs: int, progress: Progress, val: float | None, bar) -> None:
    train_loss = progress.epoch_loss / progress.epoch_targets if progress.epoch_targets else float("nan")
    line = f"epoch {epoch}/{n_epochs}: train loss {train_loss:.4f}"
    if val is not None:
        line += f", val loss {val:.4f}" + (" (best)" if progress.best_step == progress.step else "")
    line += f", {progress.tokens / max(progress.step_seconds, 1e-9):.0f} tok/s, step {progress.step}"
    if progress.early_stopped:
        line += f"; early stop: no improvement in {progress.bad_evals} validations"
    bar.write(line)


def _oom_error(e: BaseException, cfg: Config, step: int) -> BaseException:
    """Out of memory -> a one-line UserError saying how to continue; other errors unchanged."""
    if not isinstance(e, torch.cuda.OutOfMemoryError) and "can't allocate memory" not in str(e):
        return e
    b, a = cfg.train.batch_size, cfg.train.grad_accum
    hint = f"--batch-size {b // 2} --grad-accum {a * 2}" if b > 1 else f"--max-length {cfg.data.max_length // 2}"
    return UserError(
        f"out of memory at step {step} (batch size {b}, max length {cfg.data.max_length}); use a smaller "
        f"micro-batch with more accumulation (same effective batch), e.g. {hint}, or a shorter --max-length; "
        "add --resume to continue from the last checkpoint")


def _write_results(run: Path, cfg: Config, meta: dict, trainable: int, total: int, precision: str,
                   progress: Progress, epochs: float, world: int, memory_kind: str) -> None:
    """results.json: train_seconds counts optimizer steps only; validation and checkpoint
    writing are timed apart, and wall_seconds is the whole loop."""
    epochs = round(epochs, 3)
    atomic_write_json(run / "results.json", {
        "method": cfg.method.name, "base_model": meta["base_model"], "data": meta.get("data"),
        "data_sizes": (meta.get("data") or {}).get("sizes"), "trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total,
        "train_seconds": progress.step_seconds, "validation_seconds": progress.validation_seconds,
        "checkpoint_seconds": progress.checkpoint_seconds, "wall_seconds": progress.train_seconds,
        "epochs_run": int(epochs) if epochs == int(epochs) else epochs,
        "steps": progress.step, "best_val_loss": progress.best_val_loss, "best_step": progress.best_step,
        "peak_memory_mb": progress.peak_memory_mb, "peak_memory_kind": memory_kind,
        "tokens_per_s": progress.tokens / progress.step_seconds if progress.step_seconds else None,
        "early_stopped": progress.early_stopped, "precision": precision, "processes": world,
        "finished": True,
    })
