"""`sumtune plan`: what `sumtune experiment` with the same arguments would cost here, before it
runs: per method, seconds per optimizer step, training and validation time, the test split's
evaluation time, peak memory (with its kind) and trainable parameters, from a short
calibration on this machine (`recipes.calibrate`) in a temporary directory, removed afterwards.
Nothing is written into the experiment directory; `output` writes the projection as JSON.

The projection (each figure is one):
- training: the trainer's own step plan (`training.state.plan_steps`) x the average step (the
  timed steps' seconds per padded token x the epoch's mean padded tokens a step; head-only last_layers: its first epoch at the cache-cold step, later epochs at the warm
  one); validation passes (each epoch end, and every train.eval_steps) x a pass, plus saving
  the best weights at each; checkpoints (epoch ends, every train.save_steps) x one; an upper
  bound, as early stopping can only shorten a run;
- evaluation: the test rows the experiment evaluates (its --eval-limit or the run's caps), in
  batches: a loss pass and decoding with the configured preset, each x its batches, plus
  loading the run and scoring (ROUGE, intervals) per article;
- --sweep-lr: each grid value's short run (an upper bound: one more if the best rate is at an
  edge); --seeds N: N trainings and evaluations.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sumtune.config import Config, decoding_summary, set_method
from sumtune.errors import UserError
from sumtune.io import atomic_write_json
from sumtune.memory import current_rss_mb
from sumtune.methods import get_method
from sumtune.modeling import resolve_precision
from sumtune.progress import bar
from sumtune.recipes.calibrate import Calibrator
from sumtune.recipes.calibration import Calibration
from sumtune.recipes.experiment import (
    LR_GRID,
    SWEEP_BUDGET_FRACTION,
    Plan,
    _check_plan,
    _sweep_steps,
    for_data,
    grid_key,
)
from sumtune.training.budget import KINDS, budget_of
from sumtune.training.state import plan_steps
from sumtune.training.trackers import wants_samples

HEADROOM = 0.10  # a projected peak within 10% of the device's memory is "tight"
# Chosen for the plan's cost: one timed step (scaled by its padded tokens to the epoch's mean step,
# `Calibration.per_step`) after the warm-up micro-batch, and the first decoding batch plus one more.
# bench/plan_accuracy.py on the real model (prompt_tuning, lightly loaded machine, one run) kept every
# figure within its bound at these defaults (docs/planning.md); on a loaded machine the times were not.
DEFAULT_STEPS = 1
DEFAULT_ARTICLES = 4


@dataclass
class TrainingProjection:
    """One training run's projected seconds: optimizer steps, validation, checkpoints."""

    steps: int
    step_seconds: float  # all optimizer steps
    validations: int
    validation_seconds: float
    checkpoints: int
    checkpoint_seconds: float
    setup_seconds: float

    @property
    def seconds(self) -> float:
        return self.step_seconds + self.validation_seconds + self.checkpoint_seconds + self.setup_seconds


@dataclass
class Projection:
    """One method's projected cost in the experiment (seconds; memory in MB of `memory_kind`)."""

    method: str
    trainable_params: int
    seconds_per_step: float | None
    seconds_per_step_cached: float | None  # head-only last_layers after its first epoch
    training: TrainingProjection | None
    sweep_runs: int
    sweep_seconds: float
    runs: int  # seeds that train (zero_shot: 1)
    eval_articles: int
    eval_seconds: float  # loading + loss + decoding + scoring, one evaluation
    eval_decode_seconds: float
    eval_loss_seconds: float
    eval_score_seconds: float
    total_seconds: float
    peak_memory_mb: float  # max of training (incl. a projected feature cache) and evaluation
    train_peak_memory_mb: float
    eval_peak_memory_mb: float
    memory_kind: str
    fits: str  # "fits" | "tight" | "does not fit"
    error: str | None = None


def _count_until(total: int, every: int, also: set[int]) -> int:
    """How many distinct steps <= total are in `also` or a multiple of `every` (0: none)."""
    marks = set(also)
    if every:
        marks.update(range(every, total + 1, every))
    return len({m for m in marks if 0 < m <= total})


def project_training(cal: Calibration, cfg: Config, steps: int | None = None) -> TrainingProjection:
    """The training seconds of one run of `cfg` from the calibration: the trainer's step plan
    (or `steps` optimizer steps, e.g. from a budget) x the average step (`Calibration.per_step`), plus validation,
    best-weight saves and checkpoints, as `recipes.train` schedules them."""
    tc = cfg.train
    plan = plan_steps(cfg, cal.n_train, 1)
    total = steps if steps is not None else plan.total
    per_step = cal.per_step()
    cold = min(total, plan.steps_per_epoch) if cal.feature_cache else total
    warm = cal.per_step(cached=True) if cal.feature_cache else per_step
    epoch_ends = set(range(plan.steps_per_epoch, total + 1, plan.steps_per_epoch)) | {total}
    validations = _count_until(total, tc.eval_steps, epoch_ends)
    first_pass = cal.val_pass()
    later_pass = cal.val_pass(cached=cal.feature_cache)
    checkpoints = _count_until(total - 1, tc.save_steps, epoch_ends)
    # each validation also decodes the selection subset, or else the trackers' sample predictions
    decoded = cfg.eval.select_samples if tc.select_by != "loss" else tc.log_predictions if wants_samples(cfg) else 0
    if decoded and cal.articles_decoded:
        per_article = (cal.decode_build_seconds + sum(cal.decode_batch_seconds)) / cal.articles_decoded
        later_pass += min(decoded, cal.n_val) * per_article
        first_pass += min(decoded, cal.n_val) * per_article
    return TrainingProjection(
        steps=total, step_seconds=cold * per_step + (total - cold) * warm, validations=validations,
        validation_seconds=first_pass + max(0, validations - 1) * later_pass + validations * cal.save_seconds,
        checkpoints=checkpoints, checkpoint_seconds=checkpoints * cal.checkpoint_seconds,
        setup_seconds=cal.setup_seconds)


def budget_steps(cal: Calibration, cfg: Config) -> int | None:
    """The optimizer steps a budget lets a run take (capped by its epochs/max-steps), None without
    one: a FLOPs budget's as the trainer counts it; a seconds budget's from the timed steps (the
    first epoch at the cold rate when head-only last_layers caches features), the step that
    reaches it included, as the trainer stops."""
    budget = budget_of(cfg.train)
    if budget is None:
        return None
    steps = plan_steps(cfg, cal.n_train, 1)
    total = steps.total
    if budget.kind == "flops":
        spent = itertools.accumulate(cal.step_flops[:total])
        return next((k + 1 for k, f in enumerate(spent) if f >= budget.limit), total)
    per_step = cal.per_step()
    warm = cal.per_step(cached=True) if cal.feature_cache else per_step
    cold = min(total, steps.steps_per_epoch) if cal.feature_cache else total
    if budget.limit <= cold * per_step:
        return max(1, min(total, math.ceil(budget.limit / per_step)))
    return min(total, cold + math.ceil((budget.limit - cold * per_step) / warm))


def _sweep(cal: Calibration, cfg: Config, plan: Plan) -> tuple[int, float]:
    """(runs, seconds) of the method's lr sweep: every grid value plus one edge extension."""
    if not plan.sweep_lr or not cal.trains or _fixed_lr(plan, cal.method) is not None:
        return 0, 0.0
    c = copy.deepcopy(cfg)
    c.train.select_by = "loss"  # as experiment's sweep runs
    budget = budget_of(c.train)
    steps = _sweep_steps(c)
    if budget:  # each sweep run gets a fraction of the budget, as in `run_experiment`
        setattr(c.train, KINDS[budget.kind], budget.limit * SWEEP_BUDGET_FRACTION)
    elif steps:
        c.train.max_steps = steps
    else:
        c.train.epochs, c.train.max_steps = 1, 0
    runs = len(plan.lr_grid[grid_key(c)]) + 1
    return runs, runs * project_training(cal, c, budget_steps(cal, c)).seconds


def _fixed_lr(plan: Plan, method: str) -> float | None:
    return plan.lr.get(method) if isinstance(plan.lr, dict) else plan.lr


def memory_limit(device: torch.device) -> tuple[float, str]:
    """(MB, what it is) the device offers a run: CUDA's total memory; on a CPU the RAM available
    now (MemAvailable) plus what this process holds."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20, f"CUDA total memory of {device}"
    try:
        info = {line.split(":")[0]: float(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
        return info["MemAvailable"] / 1024 + current_rss_mb(), "RAM available now (MemAvailable) + this process"
    except (OSError, KeyError, ValueError, IndexError):
        return float("inf"), "unknown (no /proc/meminfo)"


def _fits(peak: float, limit: float) -> str:
    return "fits" if peak <= (1 - HEADROOM) * limit else "tight" if peak <= limit else "does not fit"


def project(cal: Calibration, cfg: Config, plan: Plan, limit: float) -> Projection:
    """A method's projection in the experiment `plan` over `cfg` (a calibration that ran out of
    memory: flagged, its times unknown)."""
    if cal.error:
        return Projection(cal.method, cal.trainable_params, None, None, None, 0, 0.0, 0, cal.n_test, 0.0, 0.0, 0.0,
                          0.0, 0.0, max(cal.train_peak_mb, cal.eval_peak_mb), cal.train_peak_mb, cal.eval_peak_mb,
                          cal.memory_kind, "does not fit", cal.error)
    ev = cfg.eval
    loss_s = cal.loss_pass()
    decode_s = cal.decode_pass(math.ceil(cal.n_test / max(1, ev.batch_size // ev.num_beams)))
    score_s = cal.score_seconds * cal.n_test / max(1, cal.articles_decoded)
    eval_s = cal.eval_load_seconds + loss_s + decode_s + score_s
    runs = max(1, plan.seeds) if cal.trains else 1
    training = project_training(cal, cfg, budget_steps(cal, cfg)) if cal.trains else None
    train_once = training.seconds if training else cal.setup_seconds + cal.val_pass() + cal.save_seconds
    sweep_runs, sweep_s = _sweep(cal, cfg, plan)
    train_peak = cal.train_peak_mb + cal.feature_cache_mb
    peak = max(train_peak, cal.eval_peak_mb)
    return Projection(
        method=cal.method, trainable_params=cal.trainable_params,
        seconds_per_step=cal.per_step() if cal.step_seconds else None,
        seconds_per_step_cached=cal.per_step(cached=True) if cal.feature_cache else None,
        training=training, sweep_runs=sweep_runs, sweep_seconds=sweep_s, runs=runs, eval_articles=cal.n_test,
        eval_seconds=eval_s, eval_decode_seconds=decode_s, eval_loss_seconds=loss_s, eval_score_seconds=score_s,
        total_seconds=sweep_s + runs * (train_once + eval_s), peak_memory_mb=peak, train_peak_memory_mb=train_peak,
        eval_peak_memory_mb=cal.eval_peak_mb, memory_kind=cal.memory_kind,
        fits=_fits(peak, limit))


def _method_cfg(cfg: Config, plan: Plan, method: str) -> Config:
    """The method's configuration as `run_experiment` trains it (lr: fixed, else its grid's middle)."""
    c = copy.deepcopy(cfg)
    set_method(c, method)
    lr = _fixed_lr(plan, method)
    if lr is None and get_method(method).trains:
        grid = plan.lr_grid.get(grid_key(c)) or LR_GRID[grid_key(c)]
        lr = grid[len(grid) // 2]
    if lr is not None:
        c.train.lr = lr
    return c


def run_plan(cfg: Config, plan: Plan | None = None, steps: int = DEFAULT_STEPS, articles: int = DEFAULT_ARTICLES,
             progress: bool = True) -> dict[str, Any]:
    """Calibrate every method of `plan` and project its cost; returns the plan record (the JSON)."""
    plan = for_data(plan or Plan(), cfg)
    _check_plan(cfg, plan)
    if steps < 1 or articles < 1:
        raise UserError("--calibration-steps and --calibration-articles must be >= 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("sumtune plan calibrates in one process; run it without accelerate launch")
    root = Path(tempfile.mkdtemp(prefix="sumtune-plan-"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    limit, limit_kind = memory_limit(device)
    methods = plan.methods()
    projections, calibrations = [], []
    try:
        total = sum(Calibrator.tasks(steps, articles, method.trains,
                                     cached=method.caches_features(method.options(_method_cfg(cfg, plan, m).method)))
                    for m in methods if (method := get_method(m)).needs_model)  # lead3: nothing to calibrate
        with bar("calibrating", total, "task", enabled=progress) as b:
            calibrator = Calibrator(root, steps, steps, articles, plan.eval_limit, b)
            for m in methods:
                b.set_description(f"calibrating {m}")
                c = _method_cfg(cfg, plan, m)
                cal = calibrator.calibrate(c)
                calibrations.append(cal)
                projections.append(project(cal, c, plan, limit))
            b.update(max(0, total - b.n))
        precision = resolve_precision(cfg.train.precision, device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _record(cfg, plan, steps, articles, device, precision, limit, limit_kind, projections, calibrations)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def _record(cfg: Config, plan: Plan, steps: int, articles: int, device: torch.device, precision: str,
            limit: float, limit_kind: str, projections: list[Projection], cals: list[Calibration]) -> dict:
    n = next((c for c in cals if c.n_train), cals[0])
    return {
        "kind": "projection (not measured runs)",
        "calibration": {"optimizer_steps": steps, "warmup_steps": 1, "rows_per_step": max(c.rows_per_step for c in cals),
                        "rows_alone": [c.method for c in cals if c.rows_alone],
                        "rows_per_micro_batch": cfg.train.batch_size,
                        "whole_steps": [c.method for c in cals if c.step_seconds and not c.rows_alone],
                        "loss_passes": steps, "articles_decoded": max((c.articles_decoded for c in cals), default=0),
                        "per_method": {c.method: asdict(c) for c in cals}},
        "device": _device_name(device), "precision": precision, "model": cfg.model.name, "data": cfg.data.source,
        "data_sizes": {"train": n.n_train, "validation": n.n_val, "test_evaluated": n.n_test},
        "decoding": decoding_summary(cfg.eval),
        "budget": {"epochs": cfg.train.epochs, "max_steps": cfg.train.max_steps, "batch_size": cfg.train.batch_size,
                   "grad_accum": cfg.train.grad_accum, "max_length": cfg.data.max_length},
        "training_budget": (b := budget_of(cfg.train)) and {"kind": b.kind, "limit": b.limit},
        "select_by": cfg.train.select_by,
        "sweep_lr": plan.sweep_lr, "seeds": plan.seeds, "eval_limit": plan.eval_limit,
        "memory_limit_mb": limit, "memory_limit_kind": limit_kind, "headroom": HEADROOM,
        "total_seconds": sum(p.total_seconds for p in projections),
        "methods": [asdict(p) for p in projections],
        "notes": ["training times are upper bounds: early stopping can only shorten a run",
                  "an lr sweep counts one run per grid value plus one edge extension (an upper bound)"],
    }


def _timed_steps(cal: dict) -> str:
    """What the training calibration timed: one step on the longest micro-batch where rows run alone (each
    row's forward and backward before the next row's), else whole steps."""
    more = cal["optimizer_steps"] - 1
    parts = []
    if cal["rows_alone"]:
        parts.append(f"one step on the {cal['rows_per_micro_batch']} longest training rows, each alone (+1 warm-up on the "
                     "shortest row)"
                     + (f" and {more} optimizer steps of {cal['rows_per_step']} rows" if more else "")
                     + f" for {', '.join(cal['rows_alone'])}, whose rows run alone on this device")
    if cal["whole_steps"]:
        parts.append(f"{cal['optimizer_steps']} timed optimizer steps of {cal['rows_per_step']} rows (after a warm-up "
                     f"step) for {', '.join(cal['whole_steps'])}")
    return "; ".join(parts) or "no training"


def _limit(b: dict) -> str:
    return f"{b['limit']:g} s of optimizer steps" if b["kind"] == "seconds" else f"{b['limit']:.3g} training FLOPs"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_plan(record: dict) -> str:
    """The table with its header: what the figures are, the calibration, the machine."""
    cal, d = record["calibration"], record["decoding"]
    sizes = record["data_sizes"]
    lines = [
        "Projected cost of `sumtune experiment` with these arguments (PROJECTIONS from a calibration, not measured runs): "
        + _timed_steps(cal) + f", {cal['loss_passes']} sampled validation and test loss "
        + ("rows" if cal["rows_alone"] else "batches") + f" per method, and {cal['articles_decoded']} decoded articles "
        "per decoding signature (every method is projected at the base model's summary lengths).",
        f"Machine: {record['device']}; precision {record['precision']}; decoding {d['label']} ({d['num_beams']} beam(s), "
        f"up to {d['max_new_tokens']} new tokens); data: {sizes['train']} train / {sizes['validation']} validation rows, "
        f"{sizes['test_evaluated']} test articles evaluated; "
        + (f"{record['budget']['max_steps']} max steps" if record['budget']['max_steps']
           else f"{record['budget']['epochs']} epochs") + f"; seeds {record['seeds']}"
        + ("; lr sweep" if record["sweep_lr"] else "")
        + (f"; a budget of {_limit(record['training_budget'])} per method" if record.get("training_budget") else "")
        + (f"; selection by validation {record['select_by']} (its decoding in validation)"
           if record.get("select_by", "loss") != "loss" else "") + ".",
        f"Memory: peak of training and evaluation, against {record['memory_limit_mb']:.0f} MB "
        f"({record['memory_limit_kind']}); 'tight' within {100 * record['headroom']:.0f}% of it. "
        "Training times are upper bounds (early stopping can only shorten them).",
        "",
        "| method | trainable params | s/step | steps | training | validation | lr sweep | test evaluation | "
        "total (all runs) | peak memory | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in record["methods"]:
        t = p["training"]
        step = "-" if p["seconds_per_step"] is None else f"{p['seconds_per_step']:.3g}"
        if p["seconds_per_step_cached"] is not None:
            step += f" (then {p['seconds_per_step_cached']:.3g}, features cached)"
        lines.append(
            f"| {p['method']} | {p['trainable_params']:,} | {step} | {t['steps'] if t else 0} | "
            f"{duration(t['step_seconds']) if t else '-'} | {duration(t['validation_seconds']) if t else '-'} | "
            + (f"{p['sweep_runs']} runs, {duration(p['sweep_seconds'])}" if p["sweep_runs"] else "-")
            + f" | {duration(p['eval_seconds'])} ({p['eval_articles']} articles) | "
            f"{duration(p['total_seconds'])}" + (f" ({p['runs']} seeds)" if p["runs"] > 1 else "") + " | "
            + f"{p['peak_memory_mb']:.0f} MB {p['memory_kind']} | {p['fits']}"
            + (f": {p['error']}" if p["error"] else "") + " |")
    lines.append(f"\nProjected total: {duration(record['total_seconds'])} (all methods, one after another).")
    return "\n".join(lines)


def print_plan(record: dict, as_json: bool = False, output: str | Path | None = None) -> None:
    """The table (or JSON), then one line naming what was written (with JSON, on stderr)."""
    if output:
        atomic_write_json(Path(output), record)
    print(json.dumps(record, indent=1) if as_json else format_plan(record))
    last = f"wrote {output}" if output else "nothing written (projections only; --output FILE saves them as JSON)"
    print(last, file=sys.stderr if as_json else sys.stdout)
