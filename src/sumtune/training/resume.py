"""Resumable checkpoints and the checks around a run directory.

The sample order depends only on (seed, epoch), so the data position is the number of
optimizer steps done. A checkpoint holds that step, the trainable weights, the optimizer and
scheduler, every process's RNG states, the early-stopping state and `sources.json` (the
content fingerprints of the base model and the data); metrics.jsonl is cut back to its
length at the checkpoint. A resume is refused when the configuration (but the keys that
cannot change the optimisation), the effective batch, the data's content or the base
weights differ.

Another number of processes: a step takes the same `batch_size x grad_accum x processes`
samples in the same global order whatever the processes (the resume checks that product),
so a run resumed with M processes trains step k on the very rows the N-process run would
have; FSDP shards are resharded on load (`training.reshard`). What cannot carry over are
the per-process random generators (processes the saved run did not have take process 0's;
dropout masks differ) and the order of float sums (gradients are reduced over other
processes): the loss curve continues within rounding, bit-identity holds at an equal N.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from sumtune.checkpoint import (
    latest_checkpoint,
    optimizer_from_files,
    optimizer_to_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sumtune.config import Config, config_differences, load_run_config
from sumtune.errors import UserError
from sumtune.lock import LOCK_NAME
from sumtune.runs import RunDir
from sumtune.training.reshard import SHARDED_DIR, STORAGE, load_resharded, save_sharded
from sumtune.training.sharding import is_sharded
from sumtune.training.state import Progress, StepPlan, TrainSetup

log = logging.getLogger(__name__)


# keys that change memory or speed, not the optimisation (batch_size x grad_accum: the checkpoint checks the product)
IGNORED_ON_RESUME = ("train.batch_size", "train.grad_accum", "train.gradient_checkpointing",
                     "train.max_tokens_per_batch", "train.cpu_offload", "train.fsdp")


def check_run_dir(run: RunDir, cfg: Config, resume: bool) -> None:
    """Never clobber a run; resume only a run whose optimisation settings are unchanged
    (batch_size x grad_accum may be refactored: the checkpoint checks their product)."""
    present = run.present()
    if not resume:
        if present:
            raise UserError(f"{run} already holds a run ({', '.join(present)}); continue it with --resume "
                            "or pass a new --output-dir")
        return
    if "config.yaml" not in present:
        raise UserError(f"nothing to resume in {run} (no config.yaml); drop --resume to start a new run there")
    diffs = config_differences(load_run_config(run.path), cfg, ignore=IGNORED_ON_RESUME)
    if diffs:
        key, old, new = diffs[0]
        raise UserError(
            f"cannot resume {run}: {key} was {old!r}, now {new!r}, which would not continue the "
            f"same training; resume with `sumtune train --config {run.config} --resume` "
            "or start a new --output-dir")


def save_state(s: TrainSetup, run: RunDir, model, optimizer, scheduler, progress: Progress) -> Path | None:
    """A resumable checkpoint at the current step boundary: every process's RNG; under FSDP
    every process writes its own shards of the weights and the optimizer state through DCP
    (`training.reshard`; staged, then moved into the checkpoint under one manifest by the
    main process)."""
    accelerator = s.accelerator
    sharded = is_sharded(model)
    rngs = gather_object([rng_state()])
    opt_tensors, opt_meta = optimizer_to_files(optimizer.state_dict())
    stage = run.checkpoints / f".shards-{progress.step:07d}"
    if sharded:
        if accelerator.is_main_process:  # a killed save's leftovers (maybe of more processes) would be read as shards
            shutil.rmtree(stage, ignore_errors=True)
        accelerator.wait_for_everyone()
        weights = {k: v.detach() for k, v in s.method.trainable_state(model).items()}
        save_sharded({**weights, **opt_tensors}, stage / SHARDED_DIR)
    path = None
    if accelerator.is_main_process:
        files: dict[str, Any] = {
            "optimizer.json": opt_meta, "scheduler.json": scheduler.state_dict(), "state.json": asdict(progress),
            "sources.json": sources(s.meta), **{f"rng-{r}.json": s for r, s in enumerate(rngs)},
        }
        if sharded:
            files["shards.json"] = {"processes": accelerator.num_processes, "fsdp_version": 2, "storage": STORAGE}
        else:
            files["trainable.safetensors"] = {k: v.detach().cpu().clone() for k, v in
                                              s.method.trainable_state(accelerator.unwrap_model(model)).items()}
            files["optimizer.safetensors"] = opt_tensors
        path = save_checkpoint(run.checkpoints, progress.step, files, staged=stage if sharded else None)
    accelerator.wait_for_everyone()
    return path


def load_tensors_into(run: RunDir, path: Path, files: dict, net, method, optimizer) -> None:
    """The checkpoint's trainable weights and optimizer state into this run's: as saved when
    neither is sharded, else resharded from whatever number of processes wrote them."""
    saved = files.get("shards.json")
    if saved is not None and saved.get("storage") != STORAGE:
        raise UserError(f"cannot resume {run}: {path.name} holds FSDP shards in the per-process format of an "
                        "earlier sumtune, which cannot be resharded; start a new --output-dir")
    params = method.trainable_state(net)
    if saved is None and not is_sharded(net):
        weights, opt_tensors = files["trainable.safetensors"], files["optimizer.safetensors"]
        if set(weights) != set(params):
            raise UserError(f"{path}: its weights do not match the model being trained; start a new --output-dir")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
    else:
        opt_tensors = load_resharded(path / SHARDED_DIR if saved else path, params, optimizer)
    optimizer.load_state_dict(optimizer_from_files(opt_tensors, files["optimizer.json"]))


def saved_processes(files: dict) -> int:
    """How many processes wrote a checkpoint (one RNG file each)."""
    return sum(name.startswith("rng-") for name in files)


def sources(meta: dict) -> dict:
    """What the run trains on, by content: the base model's and the data's fingerprints."""
    return {"base_model": meta["base_model"], "data": meta["data"]["fingerprint"]}


def check_sources(run: RunDir, saved: dict, now: dict) -> None:
    """Refuse to resume onto other base weights or changed data (same paths, other content)."""
    if saved["data"].get("sha256") != now["data"].get("sha256"):
        raise UserError(f"cannot resume {run}: the data changed since its checkpoint (content sha256 "
                        f"{str(saved['data'].get('sha256'))[:12]}, now {str(now['data'].get('sha256'))[:12]}); "
                        "restore the data it was trained on or start a new --output-dir")
    if saved["base_model"].get("weights_sha") != now["base_model"].get("weights_sha"):
        raise UserError(f"cannot resume {run}: the base model's weights differ from its checkpoint's "
                        f"({saved['base_model'].get('weights_sha')}, now {now['base_model'].get('weights_sha')}); "
                        "point --model at the model it was trained on or start a new --output-dir")


def restore(s: TrainSetup, run: RunDir, plan: StepPlan, model, optimizer, scheduler) -> Progress | None:
    """Load the newest good checkpoint into the prepared objects; None when there is none yet."""
    accelerator, cfg, method = s.accelerator, s.cfg, s.method
    sharded = is_sharded(model)
    found = latest_checkpoint(run.checkpoints, warn=log.warning, tensors=not sharded)  # shards: read as sliced
    if found is None:
        log.warning("%s has no checkpoint yet; training starts from the beginning", run)
        return None
    path, files = found
    if "sources.json" in files:  # checkpoints before content fingerprints have none
        check_sources(run, files["sources.json"], sources(s.meta))
    saved = Progress.from_state(files["state.json"])
    per_step, micro = plan.per_step, plan.micro
    if saved.samples_per_step != per_step:
        keep = saved.samples_per_step / (plan.world * plan.grad_accum)  # the batch size that keeps it
        hint = (f"--batch-size {int(keep)} with {plan.world} process{'es' * (plan.world > 1)}" if keep.is_integer()
                else "e.g. halve --batch-size and double --grad-accum")
        raise UserError(
            f"cannot resume {run}: a step took {saved.samples_per_step} samples (batch_size x grad_accum x processes), "
            f"now {per_step}; keep that product as it was ({hint})")
    if cfg.data.group_by_length and saved.micro_samples != micro:
        raise UserError(
            f"cannot resume {run}: with data.group_by_length the order depends on batch_size x processes, "
            f"which was {saved.micro_samples}, now {micro}; keep it as it was")
    load_tensors_into(run, path, files, model if sharded else accelerator.unwrap_model(model), method, optimizer)
    scheduler.load_state_dict(files["scheduler.json"])
    # with another number of processes the per-process generators cannot all carry over (dropout masks differ)
    set_rng_state(files.get(f"rng-{accelerator.process_index}.json", files["rng-0.json"]))
    saved.micro_samples = micro
    before = saved_processes(files)
    moved = f", saved by {before} processes, now {accelerator.num_processes}" if before != accelerator.num_processes else ""
    print(f"resuming {run} from {path.name} (step {saved.step}{moved})")
    return saved


def remove_failed_start(run: RunDir, created: bool) -> None:
    """A run that failed before its first optimizer step leaves nothing behind (its checks
    passed, so only files of this start are there)."""
    if run.checkpoints.exists() or run.is_finished():
        return
    if run.metrics.is_file() and run.metrics.stat().st_size > 0:
        return  # it trained: keep what it wrote (best weights, records)
    for name in (*run.FILES, LOCK_NAME):
        path = run.path / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            run.path.rmdir()  # only if empty


# bytes per trainable parameter: fp32 weights + AdamW's two moments in a checkpoint, fp32 best weights
CHECKPOINT_BYTES, BEST_BYTES = 12, 4


def warn_if_short_of_space(run: RunDir, trainable: int) -> None:
    """One warning line when the run's filesystem has less than 3x the largest write free: a
    new checkpoint is written before the oldest is deleted, and the best weights beside them."""
    largest = trainable * (CHECKPOINT_BYTES + BEST_BYTES)
    free = shutil.disk_usage(run.path).free
    if free < 3 * largest:
        log.warning("%s: %.0f MB free, less than 3x the largest write (%.0f MB: a checkpoint plus the best weights); "
                    "checkpoints may fail with 'no space left', free some space", run, free / 2**20, largest / 2**20)
