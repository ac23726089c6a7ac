"""PEFT's prompt-learning models (prefix tuning, P-tuning) behind the method contract.

PEFT's P-tuning model returns logits for its virtual tokens too; the method contract wants logits
aligned with `input_ids`, so `VirtualTokenModel` strips them (prefix tuning's virtual tokens live
in the key/value cache and have no logits). It also says what our batched decoder puts in front
of every prompt: `soft_prompt` (P-tuning: the encoder's output embeddings, [n, hidden]) or
`prefix_kv()` (prefix tuning: each layer's keys/values, [1, kv_heads, n, head_dim]).

Saving writes PEFT's own files, so `PeftModel.from_pretrained(base, RUN/adapter)` loads them.
Neither exports as a plain model: their virtual tokens are not weights of any layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from sumtune.methods.base import DecodingParts, Method, freeze
from sumtune.methods.p_tuning.config import PTuningConfig
from sumtune.methods.peft_io import PEFT_WEIGHTS, cache_layers, load_peft, save_peft
from sumtune.methods.prefix_tuning.config import PrefixTuningConfig


class VirtualTokenModel(nn.Module):
    """A PEFT prompt-learning model (`.peft`) whose logits are aligned with `input_ids`."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft = peft_model

    @property
    def config(self):
        return self.base.config

    @property
    def base(self) -> nn.Module:
        """The frozen causal LM (PEFT prompt learning leaves it unchanged)."""
        return self.peft.get_base_model()

    @property
    def n_tokens(self) -> int:
        return self.peft.active_peft_config.num_virtual_tokens

    @property
    def is_prefix(self) -> bool:
        return self.peft.active_peft_config.peft_type == "PREFIX_TUNING"

    @property
    def soft_prompt(self) -> torch.Tensor | None:
        """P-tuning's virtual token embeddings [n, hidden] (the prompt encoder's output); None for prefixes."""
        return None if self.is_prefix else self.peft.get_prompt(batch_size=1)[0]

    def prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Prefix tuning's keys and values per layer, as PEFT puts them in the cache; None for P-tuning."""
        if not self.is_prefix:
            return None
        return cache_layers(self.peft.get_prompt(batch_size=1))

    def decoding_parts(self) -> DecodingParts:
        """The base model and what goes before every prompt: the prefix in the cache, or P-tuning's vectors."""
        if self.is_prefix:
            return DecodingParts(self.base, None, self.prefix_kv())
        return DecodingParts(self.base, self.soft_prompt.detach(), None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        out = self.peft(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        logits = out.logits if self.is_prefix else out.logits[:, self.n_tokens:]
        return CausalLMOutputWithPast(loss=out.loss, logits=logits)

    def save(self, directory: Path, meta: dict) -> None:
        save_peft(self.peft, directory, meta)


class PeftVirtualTokens(Method):
    """A PEFT prompt-learning method: `n_tokens` virtual tokens, PEFT's files on disk. A
    subclass gives its `peft_type` and its PEFT config (`peft_config`)."""

    weights_file = PEFT_WEIGHTS
    peft_type = ""

    def peft_config(self, model: nn.Module, cfg: PTuningConfig | PrefixTuningConfig):
        raise NotImplementedError

    def virtual_tokens(self, cfg: PTuningConfig | PrefixTuningConfig) -> int:
        return cfg.n_tokens

    def decays(self, name: str) -> bool:
        # the virtual token table is an input (to the encoder, or the prefix itself), not a layer weight
        return not name.endswith("embedding.weight")

    def prepare(self, model, tokenizer, cfg: PTuningConfig | PrefixTuningConfig) -> VirtualTokenModel:
        from peft import get_peft_model  # late: peft (3 s to import) only for a PEFT method

        freeze(model)
        return VirtualTokenModel(get_peft_model(model, self.peft_config(model, cfg)))

    def save(self, model: VirtualTokenModel, directory: Path, meta: dict) -> None:
        model.save(directory, meta)

    def load(self, model, tokenizer, directory: Path, cfg: PTuningConfig | PrefixTuningConfig) -> VirtualTokenModel:
        return VirtualTokenModel(load_peft(model, directory, self.peft_type, self.name))
