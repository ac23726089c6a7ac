"""P-tuning (Liu et al., 2021, "GPT Understands, Too") through PEFT: `n_tokens` virtual token
embeddings produced by a trainable prompt encoder (`method.encoder`: an MLP or an LSTM + MLP,
`encoder_hidden` wide) and put in front of the input embeddings of a frozen model. Once trained
the encoder's output is a fixed soft prompt: our batched decoder computes it once and puts its
keys/values in the cache, as for prompt tuning."""

from __future__ import annotations

from pathlib import Path

from sumtune.config import MethodConfig
from sumtune.methods.base import Method, freeze
from sumtune.methods.peft_io import PEFT_WEIGHTS
from sumtune.methods.virtual_tokens import VirtualTokenModel, load_wrapped, wrap


class PTuning(Method):
    name = "p_tuning"
    weights_file = PEFT_WEIGHTS
    config_keys = ("n_tokens", "encoder", "encoder_hidden")
    not_exportable = ("its prompt encoder produces input vectors, not weights of a layer, so a plain model "
                      "cannot hold it")

    def describe(self, cfg: MethodConfig) -> str:
        return f"P-tuning, {cfg.n_tokens} tokens, {cfg.encoder.upper()} encoder"

    def virtual_tokens(self, cfg: MethodConfig) -> int:
        return cfg.n_tokens

    def decays(self, name: str) -> bool:
        # the virtual token table is the encoder's input, not a layer weight
        return not name.endswith("embedding.weight")

    def prepare(self, model, tokenizer, cfg: MethodConfig) -> VirtualTokenModel:
        from peft import PromptEncoderConfig, get_peft_model

        freeze(model)
        config = PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=cfg.n_tokens,
            encoder_reparameterization_type=cfg.encoder.upper(),
            encoder_hidden_size=cfg.encoder_hidden or model.config.hidden_size,
        )
        return wrap(get_peft_model(model, config))

    def save(self, model: VirtualTokenModel, directory: Path, meta: dict) -> None:
        model.save(directory, meta)

    def load(self, model, tokenizer, directory: Path, cfg: MethodConfig) -> VirtualTokenModel:
        return load_wrapped(model, directory, "P_TUNING", self.name)
