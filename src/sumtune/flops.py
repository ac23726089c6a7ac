"""Training FLOPs of an optimizer step, counted from the model's shape (the count bench/mfu.py
uses for model FLOP utilisation and `train.budget_flops` spends).

Model FLOPs per real (unpadded) input token, attention scores left out as in the usual 6N
count, with N the multiply-accumulates per token of the weight matrices (every Linear/Conv1D
of the decoder blocks, plus the LM head):
- forward 2N;
- gradients with respect to activations 2 x the matrices they must cross: all of N where
  something trains below the head (LoRA, a soft prompt, full: the gradient reaches the bottom
  of the model); for last_layers the head and the last k blocks, nothing for the head alone;
- gradients with respect to weights: 2 x the trainable parameters (full fine-tuning: ~2N, which
  gives the usual 6N; LoRA and soft prompts: their few parameters; head-only: the head).
These are model FLOPs, not what the hardware runs: a soft prompt's virtual tokens, the frozen-
feature cache of head-only tuning (which skips the frozen body after the first epoch) and
recomputation under gradient checkpointing leave the count as it is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from sumtune.architecture import block_linears, decoder_parts, linear_dims
from sumtune.methods import get_method


@dataclass(frozen=True)
class ModelShape:
    """What the count needs of a model: its blocks' and its head's multiply-accumulates per token."""

    layers: int
    block: int  # weight-matrix multiply-accumulates per token of one decoder block
    head: int  # the LM head's: vocab x hidden

    @property
    def matmul(self) -> int:
        """N: multiply-accumulates per token of all weight matrices (blocks plus head)."""
        return self.layers * self.block + self.head


def model_shape(config) -> ModelShape:
    """The shape of a Transformers causal-LM config, read off the model built on the meta device
    (no memory, no weights): every Linear/Conv1D of a decoder block, found as the methods find
    them (`architecture.block_linears`), so any family's attention and MLP layout is counted as it is."""
    with torch.device("meta"):  # eager attention: every family builds with it (the count has no attention)
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    block = sum(i * o for i, o in (linear_dims(m) for _, m in block_linears(model)))
    vocab, hidden = model.get_output_embeddings().weight.shape
    return ModelShape(len(decoder_parts(model).blocks), block, vocab * hidden)


def flops_per_token(shape: ModelShape, method: str, trainable: int, options=None) -> int:
    """Training model FLOPs per real input token (see the module docstring); 0 when nothing trains.
    `options`: the method's own config (its `options(...)`); None: its defaults. How far the activation
    gradients reach is the method's own answer (`Method.gradient_span`)."""
    m = get_method(method)
    if not m.trains:
        return 0
    span = m.gradient_span(shape, options if options is not None else m.config_class())
    return 2 * shape.matmul + 2 * span + 2 * trainable


def step_flops(shape: ModelShape, method: str, trainable: int, tokens: int, options=None) -> int:
    """Training FLOPs of one optimizer step over `tokens` real input tokens (all processes)."""
    return tokens * flops_per_token(shape, method, trainable, options)
