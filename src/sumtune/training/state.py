"""What a training run is made of, built once before the loop: the accelerator, the data,
the method model with its fast paths and loss, the optimizer and schedule, the step layout,
and `Progress`, the resumable state. `setup` is public: the benchmarks build exactly what
`sumtune train` trains.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from transformers import get_scheduler

from sumtune.config import Config
from sumtune.data import Collator, datasets_cache, epoch_order, load_splits, tokenize_splits
from sumtune.errors import UserError
from sumtune.fastpath import (
    FastPathContext,
    apply_fast_paths,
    enabled_names,
    from_config,
    fused_adamw,
    select_loss,
)
from sumtune.fingerprints import data_fingerprint
from sumtune.flops import model_shape
from sumtune.io import FULL_DISK, writing
from sumtune.methods import get_method
from sumtune.methods.base import Method
from sumtune.modeling import (
    autocast_dtype,
    count_params,
    load_model,
    load_tokenizer,
    max_positions,
    resolve_precision,
)
from sumtune.quantize import check_quantize
from sumtune.runs import run_meta
from sumtune.training.selection import Selection
from sumtune.training.sharding import FSDP_FAST_PATHS, fsdp_plan
from sumtune.training.step import token_loss_sum
from sumtune.training.trackers import check_trackers, log_with, wants_samples

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything besides weights, optimizer and RNG that a resumed run needs (state.json)."""

    step: int = 0  # optimizer steps done; with the seed, also the position in the data order
    samples_per_step: int = 0  # batch_size x processes x grad_accum
    micro_samples: int = 0  # batch_size x processes
    best_val_loss: float | None = None  # with train.select_by other than loss: the loss at best_step
    best_score: float | None = None  # train.select_by other than loss: the best validation ROUGE (0..1)
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
    flops: int = 0  # training FLOPs spent (sumtune.flops), all processes
    last_step_seconds: float = 0.0  # the latest step's time (a seconds budget's schedule estimates the next)
    stopped_by_budget: bool = False
    schedule_steps: int = 0  # a FLOPs budget: the step it ends at, counted ahead; a seconds budget: steps run

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """A checkpoint's state.json (keys added since it was written take their defaults)."""
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass(frozen=True)
class StepPlan:
    """How samples become optimizer steps: `per_step` samples a step (all processes and
    micro-batches), `steps_per_epoch`, `total` steps; the order of an epoch depends only on
    (seed, epoch), so the data position of a run is its step count."""

    batch_size: int
    world: int
    grad_accum: int
    steps_per_epoch: int
    total: int
    seed: int
    group_by_length: bool

    @property
    def micro(self) -> int:
        return self.batch_size * self.world

    @property
    def per_step(self) -> int:
        return self.micro * self.grad_accum

    @property
    def epochs(self) -> int:
        return math.ceil(self.total / self.steps_per_epoch)

    def epoch_bounds(self, step: int) -> tuple[int, int, int]:
        """(epoch, its first step, the step it ends at) for the step about to run."""
        epoch = step // self.steps_per_epoch
        return epoch, epoch * self.steps_per_epoch, min((epoch + 1) * self.steps_per_epoch, self.total)

    def order(self, n: int, epoch: int, lengths: list[int] | None) -> list[int]:
        return epoch_order(n, self.seed, epoch, lengths, self.group_by_length, self.micro)


def plan_steps(cfg: Config, n_train: int, world: int) -> StepPlan:
    tc = cfg.train
    per_step = tc.batch_size * world * tc.grad_accum
    steps_per_epoch = math.ceil(n_train / per_step)
    return StepPlan(tc.batch_size, world, tc.grad_accum, steps_per_epoch, tc.max_steps or tc.epochs * steps_per_epoch,
                    tc.seed, cfg.data.group_by_length)


def accelerator_for(cfg: Config, run: Path):
    """(Accelerator, precision): mixed precision from train.precision (fp32 master weights either way)."""
    # Without CUDA, run on the CPU: also makes a torchrun-style launch (`accelerate launch --multi_gpu`
    # on a machine without GPUs) a multi-CPU DDP run over gloo instead of P independent runs.
    cpu = not torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, PartialState(cpu=cpu).device)
    mixed = "no" if precision == "fp32" else precision
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()  # an earlier train() in this process used another precision
    trackers = check_trackers(cfg)  # before the model loads: packages, logins
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, log_with=log_with(trackers, run) or None,
                              project_dir=str(run))
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED":
        raise UserError("DeepSpeed is not supported by sumtune's trainer; shard with FSDP2 instead: "
                        "accelerate launch --use_fsdp --fsdp_version 2")
    if kind not in ("NO", "FSDP", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        raise UserError(f"distributed type {kind} is not supported by sumtune's trainer; use a DDP launch "
                        "(accelerate launch --multi_gpu) or FSDP2 (accelerate launch --use_fsdp --fsdp_version 2)")
    return accelerator, precision


def check_max_length(cfg: Config, model_config) -> None:
    """One-line error when a training row cannot fit the model's positions (a soft prompt's
    virtual tokens count too), before anything is written."""
    limit = max_positions(model_config)
    method = get_method(cfg.method.name)
    extra = method.virtual_tokens(method.options(cfg.method))
    if limit is not None and cfg.data.max_length + extra > limit:
        what = f"data.max_length {cfg.data.max_length}" + (f" + {extra} soft-prompt tokens" if extra else "")
        raise UserError(f"{what} exceeds the {limit} positions of model {cfg.model.name} "
                        f"({model_config.model_type}); use --max-length {limit - extra} or less")


@dataclass
class TrainSetup:
    """Everything the loop needs, built and checked before the run directory is written."""

    cfg: Config
    accelerator: Any
    precision: str
    tokenizer: Any
    data: dict  # tokenised splits (train, validation, test)
    collate: Collator
    method: Method
    model: torch.nn.Module
    meta: dict  # what method.save records: method, base model and data fingerprints, sizes
    fast_paths: list[str]
    loss_fn: Any
    trainable: int
    total: int
    fsdp: dict = field(default_factory=lambda: {"fsdp": False, "version": None, "offload": False})
    shape: Any = None  # sumtune.flops.ModelShape of the base model: the FLOPs count
    selection: Any = None  # training.selection.Selection when train.select_by is a ROUGE key
    samples: Any = None  # else a Selection decoding train.log_predictions rows for the trackers' tables

    @property
    def train_ds(self):
        return self.data["train"].select_columns(["input_ids", "labels"])

    @property
    def val_ds(self):
        return self.data["validation"].select_columns(["input_ids", "labels"])


def setup(cfg: Config, accelerator, precision: str, base: torch.nn.Module | None = None) -> TrainSetup:
    """Data, base model, method and fast paths for `cfg`; nothing written. `base`: the base model
    already loaded (a fresh copy `plan` hands each method), else loaded here."""
    check_quantize(cfg.method.quantize)  # QLoRA without CUDA: refused before anything loads
    set_seed(cfg.train.seed)  # the same initialisation (LoRA, soft prompt) in every process
    world = accelerator.num_processes
    tokenizer = load_tokenizer(cfg.model.name)
    with accelerator.main_process_first(), writing(datasets_cache(), only=FULL_DISK):
        data = tokenize_splits(load_splits(cfg.data, cfg.data.seed), tokenizer, cfg.data)  # main fills the cache
    if base is None:
        base = load_model(cfg.model.name, quantize=cfg.method.quantize)
    check_max_length(cfg, base.config)
    meta = run_meta(cfg, base, data={"source": cfg.data.source, "sizes": {s: len(data[s]) for s in data},
                                     "fingerprint": data_fingerprint(cfg.data)})
    plan = fsdp_plan(cfg, accelerator)
    check_selection(cfg, plan["fsdp"])
    method, model = prepared_model(cfg, tokenizer, base)
    selection = samples = None
    if method.trains and (cfg.train.select_by != "loss" or wants_samples(cfg)):
        if cfg.train.select_by != "loss":
            selection = Selection(cfg, model, tokenizer, precision, accelerator)  # before the training fast paths
        elif plan["fsdp"]:
            log.warning("train.log_predictions: no sample predictions under FSDP (they decode with an unsharded "
                        "copy of the model); the trackers get the metrics only")
        else:
            samples = Selection(cfg, model, tokenizer, precision, accelerator, rows=cfg.train.log_predictions)
    fast_paths, loss_fn = with_fast_paths(cfg, model, precision, world, plan["fsdp"])
    for decoder in (selection, samples):
        if decoder is not None:
            decoder.check_names(model)
    return TrainSetup(cfg, accelerator, precision, tokenizer, dict(data), Collator(tokenizer.pad_token_id), method,
                      model, meta, fast_paths, loss_fn, *count_params(model), fsdp=plan, shape=model_shape(base.config),
                      selection=selection, samples=samples)


def check_selection(cfg: Config, fsdp: bool) -> None:
    """Selection by ROUGE decodes with an unsharded copy of the model; refused under FSDP, in one line."""
    if fsdp and cfg.train.select_by != "loss":
        raise UserError(f"train.select_by={cfg.train.select_by} is not supported under FSDP (it decodes with an "
                        "unsharded copy of the model); use train.select_by=loss, or launch with DDP "
                        "(accelerate launch --multi_gpu)")


def method_model(cfg: Config, tokenizer, base: torch.nn.Module, precision: str, world: int = 1, fsdp: bool = False):
    """(method, the model that trains, the fast paths applied, the loss function) for a base model;
    under FSDP only the fast paths that stay inside a module's forward (`FSDP_FAST_PATHS`)."""
    method, model = prepared_model(cfg, tokenizer, base)
    return method, model, *with_fast_paths(cfg, model, precision, world, fsdp)


def prepared_model(cfg: Config, tokenizer, base: torch.nn.Module) -> tuple[Method, torch.nn.Module]:
    """(method, the method model), before any fast path."""
    method = get_method(cfg.method.name)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    return method, method.prepare(base, tokenizer, method.options(cfg.method))


def with_fast_paths(cfg: Config, model: torch.nn.Module, precision: str, world: int = 1, fsdp: bool = False):
    """(the fast paths applied to `model` for training, the loss function)."""
    ctx = FastPathContext(autocast=autocast_dtype(precision), attention=cfg.model.attention, distributed=world > 1,
                          compile=cfg.train.compile)
    enabled = from_config(cfg.train)
    if fsdp:
        enabled = FSDP_FAST_PATHS & enabled_names(enabled)
    fast_paths = apply_fast_paths(model, ctx, enabled)  # names, for results.json
    return fast_paths, select_loss(model, token_loss_sum, fast_paths, distributed=world > 1)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in backward (Transformers' non-reentrant checkpoint:
    it restores the RNG for the recomputation, so dropout masks and results are unchanged, and
    needs no input that requires grad, so frozen embeddings under LoRA or a soft prompt work)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"train.gradient_checkpointing: {type(model).__name__} does not support it; set it false")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def param_groups(model: torch.nn.Module, weight_decay: float, method: Method) -> list[dict]:
    """AdamW groups: weight matrices decay; biases, norms, and what the method excludes (a soft
    prompt is an input, not a layer weight: decay would pull it away from the scale of real
    token embeddings) do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and method.decays(name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, method: Method, tc, fast_paths: list[str], total_steps: int,
                   lr_lambda=None):
    """(AdamW, warmup + decay schedule) for the trainable parameters of `model` (`tc`: TrainConfig);
    `lr_lambda`: the schedule as a LambdaLR function instead (a budget's, `training.budget`)."""
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay, method), lr=tc.lr, fused=fused_adamw(fast_paths))
    if lr_lambda is not None:
        # a plain function: LambdaLR's state_dict would hold a callable object's attributes
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_lambda(step))
    # warmup's first step has rate 0: leave at least one step after it (--max-steps 1 must train)
    warmup = min(math.ceil(tc.warmup_ratio * total_steps), total_steps - 1)
    name = "constant_with_warmup" if tc.scheduler == "constant" else tc.scheduler
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
