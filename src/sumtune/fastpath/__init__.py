"""Measured fast paths for training and generation, each tested against the reference
path, each switchable and each undoable (base.py): `train.fast: false` turns all of them
off, `train.fast_paths: [names]` keeps only those, `model.attention` picks the attention.

In `FAST_PATHS` order:
- sdpa_attention (attention.py): SDPA attention (GPT-Neo: ours; GPT-2: Transformers');
- blocked_local_attention (attention.py): GPT-Neo's local layers blockwise over long rows;
- cast_frozen_weights (precision.py): frozen linear weights cast to the autocast dtype once;
- fused_gelu (gelu.py): one-kernel tanh GELU;
- fused_rmsnorm, fused_rotary, gqa_attention, fused_swiglu (rmsnorm.py, rotary.py, gqa.py, swiglu.py):
  the Llama layout's RMSNorm, rotary embeddings, grouped-query attention and SwiGLU (training only);
- label_rows_last_block (last_block.py): the Llama layout's last block only at the labelled positions
  (training, with the label loss's rows alone);
- compiled_blocks (compiled.py): the decoder blocks through torch.compile, only under `train.compile`;
- fast_lora (lora.py): PEFT LoRA layers with a cheaper dropout mask and a fused update;
- few_rows_head (head.py): the LM head for the few rows of a decoding step (inference only);
- lean_decode_step (decode_step.py): decoding steps of a Llama-layout model without Transformers'
  per-layer plumbing, beams sharing their prompt's keys/values (inference only);
- label_loss (loss.py): the LM head only at labelled positions, rows without padding;
- feature_cache (features.py): frozen-feature cache for head-only tuning;
- fused_adamw: the fused AdamW kernel where torch has one.
`apply_fast_paths` applies those that apply to a model and logs each; `revert_fast_paths`
undoes them. The last three change nothing on the model: `select_loss` and `fused_adamw`
read the applied names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import asdict

import torch
from torch import nn

from sumtune.config import FAST_PATH_NAMES
from sumtune.fastpath.attention import BlockedLocalAttention, SdpaAttention, attention_in_use, set_attention
from sumtune.fastpath.base import FastPath, FastPathContext, StepPath
from sumtune.fastpath.compiled import CompiledBlocks
from sumtune.fastpath.decode_step import LeanDecodeStep
from sumtune.fastpath.features import CachedHeadLoss, FeatureCache, FeatureCachePath
from sumtune.fastpath.gelu import FusedGelu, set_fast_gelu
from sumtune.fastpath.gqa import GqaAttention
from sumtune.fastpath.head import FewRowsHead, set_fast_head
from sumtune.fastpath.last_block import LabelRowsLastBlock
from sumtune.fastpath.lora import FastLora, set_fast_lora
from sumtune.fastpath.loss import LabelLoss, fast_token_loss_sum
from sumtune.fastpath.precision import CastFrozenWeights
from sumtune.fastpath.rmsnorm import FusedRMSNorm
from sumtune.fastpath.rotary import FusedRotary
from sumtune.fastpath.swiglu import FusedSwiGLU

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


class FusedAdamW(StepPath):
    """`fused=True` for torch.optim.AdamW: one pass over each parameter instead of a kernel per
    operation and tensor (Hugging Face Trainer uses it by default too)."""

    name = "fused_adamw"
    why = "torch has the fused AdamW kernel here (CUDA; CPU since torch 2.4)"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
        return ctx.training and (torch.cuda.is_available() or (major, minor) >= (2, 4))


ATTENTION, CAST, FUSED_ADAMW = SdpaAttention(), CastFrozenWeights(), FusedAdamW()

# The order is the order of application; revert goes backwards. Paths that change the same module
# must nest: cast_frozen_weights (inference: unties the head, Linear -> CastOnceLinear) before
# few_rows_head (-> FewRowsLinear), so undoing restores CastOnceLinear and then Linear; likewise
# sdpa_attention before blocked_local_attention (eager -> SDPA -> blocked). Attention goes first (it changes only the attention classes and configs); the training-step choices come
# last (they change nothing). `config.FAST_PATH_NAMES` lists the same names in the same order.
FAST_PATHS: tuple[FastPath, ...] = (
    ATTENTION, BlockedLocalAttention(), CAST, FusedGelu(), FusedRMSNorm(), FusedRotary(), GqaAttention(), FusedSwiGLU(),
    LabelRowsLastBlock(), CompiledBlocks(), FastLora(), FewRowsHead(), LeanDecodeStep(),
    LabelLoss(), FeatureCachePath(), FUSED_ADAMW,
)
assert tuple(p.name for p in FAST_PATHS) == FAST_PATH_NAMES, "keep config.FAST_PATH_NAMES in step"


def enabled_names(enabled: bool | Collection[str]) -> frozenset[str]:
    """True: every fast path; False: none; names: those (config validation refuses unknown ones)."""
    if isinstance(enabled, bool):
        return frozenset(FAST_PATH_NAMES) if enabled else frozenset()
    unknown = set(enabled) - set(FAST_PATH_NAMES)
    if unknown:
        raise ValueError(f"unknown fast path(s) {sorted(unknown)}; valid: {', '.join(FAST_PATH_NAMES)}")
    return frozenset(enabled)


def from_config(train) -> bool | frozenset[str]:
    """What `train.fast` and `train.fast_paths` enable: all, none, or the listed names."""
    if not train.fast:
        return False
    return frozenset(train.fast_paths) if train.fast_paths else True


def apply_fast_paths(model: nn.Module, ctx: FastPathContext, enabled: bool | Collection[str] = True) -> list[str]:
    """Apply, in `FAST_PATHS` order, each enabled fast path that applies to `model` under `ctx`;
    log each at INFO and return their names. Anything applied earlier is reverted first, so the
    model ends with exactly these. `model.attention: sdpa` asks for SDPA whatever `enabled` says;
    where SDPA is not applied the attention is set to eager (the reference), also undone by revert."""
    revert_fast_paths(model)
    names = enabled_names(enabled) | ({ATTENTION.name} if ctx.attention == "sdpa" else set())
    if ATTENTION.name not in names or not ATTENTION.applies_to(model, ctx):
        ATTENTION.use_reference(model)  # first: later paths see the attention the model will run
    applied = []
    for path in FAST_PATHS:
        if path.name in names and path.applies_to(model, ctx):
            path.apply(model, ctx)
            log.debug("fast path: %s (%s)", path.name, path.why.format(**asdict(ctx)))
            applied.append(path.name)
    return applied


def fast_paths_for_decoding(model: nn.Module, cfg, autocast: torch.dtype | None) -> list[str]:
    """The fast paths a run's configuration (`cfg`: a `config.Config`) enables, applied for
    decoding: the one set-up `evaluate`, `summarize` and `serve` share."""
    ctx = FastPathContext(training=False, autocast=autocast, attention=cfg.model.attention)
    return apply_fast_paths(model, ctx, from_config(cfg.train))


def revert_fast_paths(model: nn.Module) -> None:
    """Undo every fast path on `model`, in reverse `FAST_PATHS` order (a no-op where none is applied)."""
    for path in reversed(FAST_PATHS):
        path.revert(model)


def applied_fast_paths(model: nn.Module) -> list[str]:
    return [p.name for p in FAST_PATHS if p.is_applied(model)]


def speed_up(model: nn.Module, fast: bool | Collection[str] = True, attention: str = "auto",
             autocast: torch.dtype | None = None, inference: bool = False) -> dict[str, object]:
    """`apply_fast_paths` with the context spelled out (the entry point before the registry), plus
    a summary: the attention in use and how many linears were cast."""
    ctx = FastPathContext(training=not inference, autocast=autocast, attention=attention)
    applied = apply_fast_paths(model, ctx, fast)
    return {"applied": applied, "attention": attention_in_use(model),
            "frozen_linears_cast": CAST.cast_count(model)}


def select_loss(model: nn.Module, reference: LossFn, fast: bool | Collection[str] = True, distributed: bool = False,
                feature_cache_mb: float = 1024) -> LossFn:
    """The `token_loss_sum(model, batch)` to train with: the feature-cached head loss when only
    the head trains (single process), else the label-positions loss, each if enabled (`fast`: a
    bool or the names `apply_fast_paths` returned); else `reference`."""
    names = enabled_names(fast)
    if FeatureCachePath.name in names and not distributed:
        cached = CachedHeadLoss.for_model(model, FeatureCache(feature_cache_mb))
        if cached is not None:
            return cached
    return label_loss_or(reference, names)


def label_loss_or(reference: LossFn, fast: bool | Collection[str] = True) -> LossFn:
    """The label-positions loss (`fast_token_loss_sum`) where `label_loss` is enabled, else `reference`."""
    return fast_token_loss_sum if LabelLoss.name in enabled_names(fast) else reference


def fused_adamw(fast: bool | Collection[str] = True) -> bool | None:
    """`fused=` for torch.optim.AdamW: True where the fused kernel exists and is enabled, else None."""
    if FusedAdamW.name not in enabled_names(fast):
        return None
    return True if FUSED_ADAMW.applies_to(nn.Module(), FastPathContext()) else None


__all__ = ["FAST_PATHS", "FastPath", "FastPathContext", "LossFn", "apply_fast_paths", "revert_fast_paths",
           "applied_fast_paths", "enabled_names", "fast_paths_for_decoding", "from_config", "fused_adamw", "label_loss_or", "select_loss", "speed_up",
           "set_attention", "set_fast_gelu", "set_fast_head", "set_fast_lora", "fast_token_loss_sum",
           "CachedHeadLoss", "FeatureCache"]
