"""Measured fast paths for training and generation, each tested against the reference
path and each switchable: `train.fast: false` turns all of them off, `model.attention`
picks the attention kernel.

- attention.py: SDPA attention for GPT-Neo (Transformers has only eager for it on CPU);
- loss.py: the LM head only at labelled positions, rows without padding;
- lora.py: PEFT LoRA layers with a cheaper dropout mask and a fused update;
- gelu.py: one-kernel tanh GELU;
- head.py: the LM head for the few rows of a decoding step;
- precision.py: frozen linear weights cast to the autocast dtype once;
- features.py: frozen-feature cache for head-only tuning;
- `fused_adamw`: the fused AdamW kernel where torch has one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sumtune.fastpath.attention import set_attention
from sumtune.fastpath.features import CachedHeadLoss, FeatureCache
from sumtune.fastpath.gelu import set_fast_gelu
from sumtune.fastpath.head import set_fast_head
from sumtune.fastpath.lora import set_fast_lora
from sumtune.fastpath.loss import fast_token_loss_sum
from sumtune.fastpath.precision import cast_for_inference, cast_frozen_linears

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def speed_up(model: nn.Module, fast: bool = True, attention: str = "auto",
             autocast: torch.dtype | None = None, inference: bool = False) -> dict[str, object]:
    """Apply the module-level fast paths to a prepared method model, in place; returns what is in
    use. With fast=False only the attention is set (eager, unless `attention` names one).
    `autocast`: the dtype training/decoding will autocast to (None: fp32), for the frozen-weight cast;
    `inference`: nothing will train (evaluation, decoding): every weight is frozen and cast."""
    cast = cast_for_inference if inference else cast_frozen_linears
    return {
        "frozen_linears_cast": cast(model, autocast) if fast and autocast else 0,
        "attention": set_attention(model, attention if attention != "auto" else ("sdpa" if fast else "eager")),
        "fused_gelu": set_fast_gelu(model, fast) if fast else 0,
        "fast_lora_layers": set_fast_lora(model, fast) if fast else 0,
        "few_rows_head": set_fast_head(model, fast) if fast else False,
    }


def select_loss(model: nn.Module, reference: LossFn, fast: bool = True, distributed: bool = False,
                feature_cache_mb: float = 1024) -> LossFn:
    """The `token_loss_sum(model, batch)` to train with: the feature-cached head loss when only
    the head trains (single process), else the label-positions loss; `reference` when fast is off."""
    if not fast:
        return reference
    cached = None if distributed else CachedHeadLoss.for_model(model, FeatureCache(feature_cache_mb))
    return cached if cached is not None else fast_token_loss_sum


def fused_adamw(fast: bool = True) -> bool | None:
    """`fused=` for torch.optim.AdamW: the fused kernel where torch has it (CUDA; CPU since torch 2.4),
    one pass over each parameter instead of a kernel per operation and tensor. Hugging Face Trainer
    uses it by default too."""
    if not fast:
        return None
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return True if torch.cuda.is_available() or (major, minor) >= (2, 4) else None


__all__ = ["LossFn", "fused_adamw", "select_loss", "speed_up", "set_attention", "set_fast_gelu", "set_fast_head", "set_fast_lora",
           "fast_token_loss_sum", "CachedHeadLoss", "FeatureCache"]
