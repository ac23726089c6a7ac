"""Prefix tuning (Li & Liang, 2021) through PEFT: `n_tokens` learned keys and values in front of
every layer's attention, the base model frozen. With `method.prefix_projection` the prefixes come
from an MLP over a small embedding (Li & Liang's reparameterisation, `encoder_hidden` wide);
without it they are trained directly. Our batched decoder puts each layer's prefix in the
key/value cache before the prompt, as it does for a soft prompt's keys/values."""

from __future__ import annotations

from sumtune.methods.prefix_tuning.config import PrefixTuningConfig
from sumtune.methods.virtual_tokens import PeftVirtualTokens


class PrefixTuning(PeftVirtualTokens):
    name = "prefix_tuning"
    peft_type = "PREFIX_TUNING"
    config_class = PrefixTuningConfig
    not_exportable = ("its prefixes are keys and values put in front of every layer's attention, not weights "
                      "of a layer, so a plain model cannot hold them")

    def describe(self, cfg: PrefixTuningConfig) -> str:
        return f"prefix, {cfg.n_tokens} tokens per layer" + (" (MLP reparameterised)" if cfg.prefix_projection else "")

    def peft_config(self, model, cfg: PrefixTuningConfig):
        # late: peft (3 s to import) only for a PEFT method
        from peft import PrefixTuningConfig as PeftPrefixTuningConfig

        return PeftPrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=cfg.n_tokens, prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.encoder_hidden or model.config.hidden_size,
        )
