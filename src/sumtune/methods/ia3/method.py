"""IA³ (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning") through PEFT: learned vectors that rescale the keys, the values and the
input of the MLP's down projection, one number per channel; the base model frozen. Merges into
the weights (each vector is a diagonal scaling), so a run exports as a plain model.

Targets come from a rule that holds for any decoder-only model, not a table: in a decoder block,
the key/value projections (by their names: k/v, key/value, or a fused qkv such as GPT-2's c_attn,
GPT-NeoX's query_key_value, Phi-3's qkv_proj, whose whole output - queries too - is rescaled) and
the MLP's down projection (the linear from a wider layer back to the hidden size, scaled on its
input: a "feed-forward" module in PEFT's terms). `method.target_modules` overrides the list."""

from __future__ import annotations

import re
from pathlib import Path

from sumtune.architecture import block_linears, linear_dims
from sumtune.errors import UserError
from sumtune.methods.base import Method, freeze
from sumtune.methods.ia3.config import IA3Config
from sumtune.methods.lora.method import uses_conv1d
from sumtune.methods.peft_io import PEFT_WEIGHTS, load_peft, save_peft

KEY_VALUE = re.compile(r"(k|v|key|value|kv|qkv|wk|wv|wqkv|query_key_value|c_attn)(_proj)?")


def _down_projections(model) -> set[str]:
    """Names inside a block (e.g. mlp.c_proj: GPT-2's attention has a c_proj of its own) of the linears
    from a wider layer back to the hidden size."""
    hidden = model.config.hidden_size
    return {n for n, m in block_linears(model) if linear_dims(m)[1] == hidden and linear_dims(m)[0] > hidden}


def targets(model, cfg: IA3Config) -> tuple[list[str], list[str]]:
    """(target modules, the feed-forward ones among them, scaled on their input)."""
    down = _down_projections(model)
    if cfg.target_modules:
        chosen = list(cfg.target_modules)
    else:
        kv = {n.rsplit(".", 1)[-1] for n, _ in block_linears(model) if KEY_VALUE.fullmatch(n.rsplit(".", 1)[-1])}
        if not kv or not down:
            missing = "key/value projections" if not kv else "MLP down projection"
            raise UserError(f"method ia3: no {missing} found in model type '{model.config.model_type}'; "
                            "name the layers with method.target_modules")
        chosen = sorted(kv | down)
    return chosen, [t for t in chosen if any(d == t or d.endswith("." + t) for d in down)]


class IA3(Method):
    name = "ia3"
    weights_file = PEFT_WEIGHTS
    config_class = IA3Config

    def describe(self, cfg: IA3Config) -> str:
        where = ", ".join(cfg.target_modules) if cfg.target_modules else "keys, values, MLP"
        return f"IA³ on {where}"

    def decays(self, name: str) -> bool:
        # the vectors start at 1 (identity): decay would pull them towards 0, switching channels off
        return False

    def prepare(self, model, tokenizer, cfg: IA3Config):
        # late: peft (3 s to import) only for a PEFT method
        from peft import IA3Config as PeftIA3Config
        from peft import get_peft_model

        freeze(model)
        chosen, feedforward = targets(model, cfg)
        try:
            return get_peft_model(model, PeftIA3Config(task_type="CAUSAL_LM", target_modules=chosen,
                                                   feedforward_modules=feedforward,
                                                   fan_in_fan_out=uses_conv1d(model, chosen)))
        except ValueError as e:
            raise UserError(f"method.target_modules: {str(e).splitlines()[0]}") from None

    def save(self, model, directory: Path, meta: dict) -> None:
        save_peft(model, directory, meta)

    def load(self, model, tokenizer, directory: Path, cfg: IA3Config):
        return load_peft(model, directory, "IA3", self.name)

    def merged(self, model):
        return model.merge_and_unload()
