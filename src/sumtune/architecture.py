"""The parts of any decoder-only Transformers model that the methods and fast paths need, found
through Transformers' own accessors rather than a table of model types, so that a family sumtune
has never seen works as long as it has the standard layout:

- the causal LM: the module with `get_output_embeddings()` (PEFT wrappers skipped);
- the body: `getattr(lm, lm.base_model_prefix)` (transformer, model, gpt_neox, ...);
- the decoder blocks: the body's `nn.ModuleList` of `config.num_hidden_layers` modules of one class
  (transformer.h, model.layers, model.decoder.layers, gpt_neox.layers);
- the final norm: a normalisation module of the body outside the blocks (a class named *Norm or an
  `nn.LayerNorm`): the one registered after the blocks, else the only one (OPT registers its
  final_layer_norm before the layers);
- the LM head and whether it is tied: `get_output_embeddings()` / `get_input_embeddings()` and the
  config's `tie_word_embeddings`;
- the attention and MLP linear layers: every `nn.Linear` / `Conv1D` inside the blocks.

Where a part cannot be found, `UserError` names the model type and the part, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sumtune.errors import UserError


def _peft_types() -> tuple[type, ...]:
    try:
        # late: peft (3 s to import) only where a model may be PEFT-wrapped
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTuner
    except ImportError:  # pragma: no cover - peft is a dependency
        return ()
    return (PeftModel, BaseTuner)


def causal_lm(model: nn.Module) -> nn.Module:
    """The Transformers causal LM inside a method model (PEFT forwards `get_output_embeddings` to
    the model it wraps: skipping its wrappers finds the model itself, the module that owns the head)."""
    skip = _peft_types()
    for m in model.modules():
        get = None if isinstance(m, skip) else getattr(m, "get_output_embeddings", None)
        if get is not None and get() is not None:
            return m
    raise UserError(f"model type '{model_type(model)}': no output embeddings (LM head) found; sumtune needs a "
                    "causal LM (AutoModelForCausalLM)")


def model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("Norm", "RMSNorm"))


@dataclass
class DecoderParts:
    lm: nn.Module
    body: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module | None  # None: the model has none (OPT-350m); `require_norm` says so

    @property
    def model_type(self) -> str:
        return model_type(self.lm)

    def require_norm(self) -> nn.Module:
        if self.final_norm is None:
            raise UserError(f"model type '{self.model_type}': no final layer norm found after the decoder blocks")
        return self.final_norm


def _blocks(body: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList] | None:
    for name, m in body.named_modules():
        if (isinstance(m, nn.ModuleList) and len(m) > 0 and (n_layers is None or len(m) == n_layers)
                and len({type(b) for b in m}) == 1):
            return name, m
    return None


def _final_norm(body: nn.Module, blocks_name: str) -> nn.Module | None:
    before, after, seen_blocks = [], [], False
    for name, m in body.named_modules():
        if name == blocks_name:
            seen_blocks = True
        inside = name == blocks_name or name.startswith(blocks_name + ".")
        if not inside and _is_norm(m):
            (after if seen_blocks else before).append(m)
    if after:
        return after[-1]
    return before[0] if len(before) == 1 else None


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The causal LM, its body, decoder blocks and final norm (see the module doc)."""
    lm = causal_lm(model)
    prefix = getattr(lm, "base_model_prefix", "")
    body = getattr(lm, prefix, None) if prefix else None
    if not isinstance(body, nn.Module):
        raise UserError(f"model type '{model_type(lm)}': its base model ('{prefix}', the model's "
                        "base_model_prefix) was not found")
    found = _blocks(body, getattr(lm.config, "num_hidden_layers", None))
    if found is None:
        raise UserError(f"model type '{model_type(lm)}': no list of decoder blocks "
                        f"({getattr(lm.config, 'num_hidden_layers', '?')} layers) found in '{prefix}'")
    name, blocks = found
    return DecoderParts(lm, body, blocks, _final_norm(body, name))


def block_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name inside its block, module) of every Linear/Conv1D in the first decoder block: the
    attention projections and MLP layers of any architecture (the blocks are alike)."""
    # late: transformers (1 s to import) only once a model is at hand
    from transformers.pytorch_utils import Conv1D

    blocks = decoder_parts(model).blocks
    return [(n, m) for n, m in blocks[0].named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def linear_dims(m: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (whose weight is [in, out])."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.weight.shape[0], m.weight.shape[1]

