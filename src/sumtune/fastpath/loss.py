"""The training loss computed only where it is needed.

The reference path runs the LM head over every position ([B, T, vocab] logits; for
a 600-token article and a 64-token summary, 90% of it is thrown away by the -100
labels) and pads every row of a micro-batch to the longest one. Here:
- the method model runs with `logits_to_keep` empty (its head projects no position) while a
  forward hook on the causal LM's body takes the final hidden states; a method's virtual tokens come
  first (the method contract), so the last T positions are aligned with `input_ids`. The model's
  modules stay as they are (no head swapped out and back on every forward);
- the head is applied only at positions whose next token carries a label;
- under autocast a frozen head's weight is cast to the autocast dtype once (autocast would
  cast the [vocab, hidden] matrix again in every micro-batch: a [50257, 768] `aten::copy_`
  per micro-batch in `bench/profile_step.py --shapes`); the result is bit-identical. A trained
  head is cast at each call, like autocast does (the head-only feature cache calls it once
  per step);
- on a CPU each row runs alone, trimmed to its last needed position (with causal
  attention this is exact: no position attends to later ones), so no compute is spent
  on padding; on a GPU or under DDP the batch runs in one pass, trimmed likewise. Rows alone
  also let the trainer run each row's backward before the next row's forward (`rows_alone`):
  the activations saved for the backward are then one row's, not the micro-batch's.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sumtune.architecture import causal_lm
from sumtune.fastpath.base import FastPathContext, StepPath
from sumtune.fastpath.last_block import rows_of_last_block


def find_lm(model: nn.Module) -> nn.Module:
    """The causal LM (the module holding the LM head) inside a method model (`architecture.causal_lm`)."""
    return causal_lm(model)


def find_head(model: nn.Module) -> nn.Module:
    """The LM head (output embeddings) of the causal LM inside a method model."""
    return find_lm(model).get_output_embeddings()


_NO_POSITION = torch.empty(0, dtype=torch.long)  # `logits_to_keep`: the head projects no position


def _body_hooks(lm: nn.Module, out: list[torch.Tensor]) -> list[tuple[nn.Module, object]]:
    """Forward hooks that take the final hidden states: the body's output, and the output of a child of
    the body that returns a model output (OPT's causal LM calls `model.decoder` directly, never `model`)."""
    body = getattr(lm, lm.base_model_prefix)

    def from_body(m, args, output):
        out.append(getattr(output, "last_hidden_state", None) if not isinstance(output, tuple) else output[0])

    def from_child(m, args, output):
        if getattr(output, "last_hidden_state", None) is not None:
            out.append(output.last_hidden_state)

    return [(body, from_body)] + [(child, from_child) for child in body.children()]


@contextmanager
def _captured(model: nn.Module, before: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward of `model` appends to the yielded list the causal LM body's
    output (the final hidden states), or the input of `before` (a final norm that trains). The LM
    head, which then sees no position, runs with autocast off: autocast would cast its whole
    [vocab, hidden] weight even for an empty product (a tied head is fp32)."""
    out: list[torch.Tensor] = []
    lm = find_lm(model)
    states: list[tuple[str, bool]] = []

    def head_off(m, args):
        device = args[0].device.type
        states.append((device, torch.is_autocast_enabled(device)))
        torch.set_autocast_enabled(device, False)
        weight = getattr(m, "weight", None)
        if weight is not None and weight.dtype != args[0].dtype:  # an untied head cast once (no position: free)
            return (args[0].to(weight.dtype), *args[1:])
        return None

    def head_on(m, args, output):
        torch.set_autocast_enabled(*states.pop())

    if before is not None:
        handles = [before.register_forward_pre_hook(lambda m, args: out.append(args[0]))]
    else:
        handles = [m.register_forward_hook(hook) for m, hook in _body_hooks(lm, out)]
    head = lm.get_output_embeddings()
    handles += [head.register_forward_pre_hook(head_off), head.register_forward_hook(head_on)]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
        while states:  # the head raised: put autocast back as it was
            torch.set_autocast_enabled(*states.pop())


def _last_output(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, before: nn.Module | None) -> torch.Tensor:
    """What `_captured` takes from one forward of `model` (virtual positions included). No key/value
    cache: a training forward has no use for one (Transformers would copy every layer's keys and values
    into it)."""
    with _captured(model, before) as out:
        model(input_ids=ids, attention_mask=mask, logits_to_keep=_NO_POSITION.to(ids.device), use_cache=False)
    return out[-1]


def final_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                 before: nn.Module | None = None) -> torch.Tensor:
    """The final hidden states [B, T, H] aligned with `ids` [B, T] (see the module doc); with
    `before`, that module's input instead (the head-only feature cache with a trained norm)."""
    out = _last_output(model, ids, mask, before)
    return out[:, out.shape[1] - ids.shape[1]:]


def label_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The final hidden states [n, H] at `positions` of one row (`ids`, `mask`: [1, T]); the last
    block computes only those rows where `label_rows_last_block` is applied (last_block.py)."""
    with rows_of_last_block(model, positions, ids.shape[1]) as state:
        out = _last_output(model, ids, mask, None)
    return out[0] if state["done"] else out[0, out.shape[1] - ids.shape[1] + positions]


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions p whose next token is a label, those labels) for one row of labels [T]."""
    pos = (labels[1:] != -100).nonzero().squeeze(1)
    return pos, labels[pos + 1]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(W h_i + b, y_i) with the logits laid out [vocab, n] (W @ h.T), forward and backward
    by hand: the GEMMs read the [vocab, H] weight in place, the softmax overwrites the logits and is
    the saved tensor, and the gradient is computed in that buffer (softmax - one-hot)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        logits = weight @ hidden.t()  # [V, n]
        if bias is not None:
            logits += bias[:, None]
        lse = torch.logsumexp(logits, dim=0)
        cols = torch.arange(targets.shape[0], device=targets.device)
        loss = (lse - logits[targets, cols]).sum()
        probs = logits.sub_(lse).exp_()
        ctx.save_for_backward(hidden, weight, probs, targets)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, g, targets = ctx.saved_tensors
        g[targets, torch.arange(targets.shape[0], device=targets.device)] -= 1.0  # softmax - one-hot
        # the scalar `grad` goes onto the small operands, not onto the [V, n] buffer
        grad_h = (g.t() @ weight).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_w = g @ (hidden * grad) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(1).mul_(grad) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None


class _LowPrecisionLinear(torch.autograd.Function):
    """x @ W.T with W given twice: the fp32 parameter (which receives the gradient, in its dtype)
    and its low-precision copy (which the GEMMs read): what autocast computes, without the cast."""

    @staticmethod
    def forward(ctx, x, weight, low):
        ctx.save_for_backward(x, low)
        ctx.weight_dtype = weight.dtype
        return x @ low.t()

    @staticmethod
    def backward(ctx, grad):
        x, low = ctx.saved_tensors
        grad_x = grad @ low if ctx.needs_input_grad[0] else None
        grad_w = (grad.t() @ x).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


# Low-precision copies of frozen head weights, by module (weakly: a copy goes with its head).
_LOW_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def low_precision_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """`module.weight` cast to `dtype`. A frozen weight is cast once and the copy kept (cast again
    if the weight is replaced or changed in place: load_state_dict bumps its version); a trained
    weight is cast at every call, as autocast does - fused optimizers update parameters without
    bumping their version, so a kept copy could go stale. Copies made in inference mode are not
    kept (they could not be saved for a later backward)."""
    w = module.weight
    if w.requires_grad or torch.is_inference_mode_enabled():
        return w.detach().to(dtype)
    key = (w._version, w.data_ptr(), dtype)
    cached = _LOW_WEIGHTS.get(module)
    if cached is None or cached[0] != key:
        cached = _LOW_WEIGHTS[module] = (key, w.detach().to(dtype))
    return cached[1]


def cached_low_weight(module: nn.Module) -> torch.Tensor | None:
    """The kept low-precision copy of `module.weight`, if any."""
    cached = _LOW_WEIGHTS.get(module)
    return None if cached is None else cached[1]


def head_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head's logits for `hidden` [n, H]; under autocast, with the weight cast once."""
    device = hidden.device.type
    if not torch.is_autocast_enabled(device) or head.bias is not None:
        return F.linear(hidden, head.weight, head.bias)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return _LowPrecisionLinear.apply(hidden.to(dtype), head.weight, low_precision_weight(head, dtype))


def head_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the LM head's logits for `hidden` [n, H] against `targets` [n].
    On a CPU in fp32, by `_LinearCrossEntropy` (its GEMMs read the weight in place, where
    `F.linear` + `F.cross_entropy` repack it on every call and keep log-probabilities besides the
    logits); elsewhere the plain ops."""
    plain = (hidden.device.type != "cpu" or torch.is_autocast_enabled("cpu")
             or hidden.dtype != torch.float32 or head.weight.dtype != torch.float32)
    if plain:
        return F.cross_entropy(head_logits(head, hidden).float(), targets, reduction="sum")
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets)


def one_pass_per_row(model: nn.Module, device: torch.device) -> bool:
    """Rows alone (no padding computed) on a CPU; one padded pass on a GPU, where a batch is
    cheaper than its rows one by one, and under DDP, which expects one forward per backward."""
    return device.type == "cpu" and not isinstance(model, nn.parallel.DistributedDataParallel)


def rows_alone(loss_fn, model: nn.Module, device: torch.device) -> bool:
    """Whether `loss_fn` runs each row of a batch alone on `model` (see the module doc): then a
    row's forward and backward can run before the next row's, and only one row's activations are
    held for the backward at a time (`training.step` does so in a single process)."""
    return getattr(loss_fn, "runs_rows_alone", False) and one_pass_per_row(model, device)


def fast_token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions of a batch, and the number of
    those positions; equal to the full-logits loss (see module doc)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    keep = labels[:, 1:] != -100
    n = int(keep.sum())
    if n == 0:
        return torch.zeros((), device=ids.device, requires_grad=True), 0
    head = find_head(model)
    if one_pass_per_row(model, ids.device):
        parts = []
        for r in range(ids.shape[0]):
            pos, _ = label_positions(labels[r])
            if pos.numel():
                end = int(pos[-1]) + 1
                parts.append(label_hidden(model, ids[r : r + 1, :end], mask[r : r + 1, :end], pos))
        hidden = torch.cat(parts)
    else:
        end = int(keep.any(0).nonzero().max()) + 1
        hidden = final_hidden(model, ids[:, :end], mask[:, :end])[keep[:, :end]]
    return head_loss_sum(head, hidden, labels[:, 1:][keep]), n


fast_token_loss_sum.runs_rows_alone = True  # type: ignore[attr-defined]  # (`rows_alone`)

class LabelLoss(StepPath):
    """The training loss above (`select_loss` picks it) instead of the full-logits loss."""

    name = "label_loss"
    why = "training: the LM head only where a label is, rows without padding"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training

    def drop_state(self, model: nn.Module) -> None:
        _LOW_WEIGHTS.pop(find_head(model), None)
