"""Prefix tuning (Li & Liang, 2021) through PEFT: `n_tokens` learned keys and values in front of
every layer's attention, the base model frozen. With `method.prefix_projection` the prefixes come
from an MLP over a small embedding (Li & Liang's reparameterisation, `encoder_hidden` wide);
without it they are trained directly. Our batched decoder puts each layer's prefix in the
key/value cache before the prompt, as it does for a soft prompt's keys/values."""

from __future__ import annotations

from pathlib import Path

from sumtune.config import MethodConfig
from sumtune.methods.base import Method, freeze
from sumtune.methods.peft_io import PEFT_WEIGHTS
from sumtune.methods.virtual_tokens import VirtualTokenModel, load_wrapped, wrap


class PrefixTuning(Method):
    name = "prefix_tuning"
    weights_file = PEFT_WEIGHTS
    config_keys = ("n_tokens", "prefix_projection", "encoder_hidden")
    not_exportable = ("its prefixes are keys and values put in front of every layer's attention, not weights "
                      "of a layer, so a plain model cannot hold them")

    def describe(self, cfg: MethodConfig) -> str:
        return f"prefix, {cfg.n_tokens} tokens per layer" + (" (MLP reparameterised)" if cfg.prefix_projection else "")

    def virtual_tokens(self, cfg: MethodConfig) -> int:
        return cfg.n_tokens

    def decays(self, name: str) -> bool:
        # a directly trained prefix is an activation, not a layer weight (as a soft prompt)
        return not name.endswith("embedding.weight")

    def prepare(self, model, tokenizer, cfg: MethodConfig) -> VirtualTokenModel:
        from peft import PrefixTuningConfig, get_peft_model

        freeze(model)
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=cfg.n_tokens, prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.encoder_hidden or model.config.hidden_size,
        )
        return wrap(get_peft_model(model, config))

    def save(self, model: VirtualTokenModel, directory: Path, meta: dict) -> None:
        model.save(directory, meta)

    def load(self, model, tokenizer, directory: Path, cfg: MethodConfig) -> VirtualTokenModel:
        return load_wrapped(model, directory, "PREFIX_TUNING", self.name)
