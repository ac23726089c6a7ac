"""P-tuning (Liu et al., 2021, "GPT Understands, Too") through PEFT: `n_tokens` virtual token
embeddings produced by a trainable prompt encoder (`method.encoder`: an MLP or an LSTM + MLP,
`encoder_hidden` wide) and put in front of the input embeddings of a frozen model. Once trained
the encoder's output is a fixed soft prompt: our batched decoder computes it once and puts its
keys/values in the cache, as for prompt tuning."""

from __future__ import annotations

from sumtune.methods.p_tuning.config import PTuningConfig
from sumtune.methods.virtual_tokens import PeftVirtualTokens


class PTuning(PeftVirtualTokens):
    name = "p_tuning"
    peft_type = "P_TUNING"
    config_class = PTuningConfig
    not_exportable = ("its prompt encoder produces input vectors, not weights of a layer, so a plain model "
                      "cannot hold it")

    def describe(self, cfg: PTuningConfig) -> str:
        return f"P-tuning, {cfg.n_tokens} tokens, {cfg.encoder.upper()} encoder"

    def peft_config(self, model, cfg: PTuningConfig):
        from peft import PromptEncoderConfig  # late: peft (3 s to import) only for a PEFT method

        return PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=cfg.n_tokens,
            encoder_reparameterization_type=cfg.encoder.upper(),
            encoder_hidden_size=cfg.encoder_hidden or model.config.hidden_size,
        )
