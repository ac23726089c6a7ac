"""LoRA through PEFT: low-rank adapters on every attention projection and MLP linear
layer (names resolved per architecture), saved in PEFT's own format and mergeable
into a plain model for export."""

from __future__ import annotations

from pathlib import Path

import torch

from sumtune.config import MethodConfig
from sumtune.errors import UserError
from sumtune.io import atomic_dir, load_tensors, read_json
from sumtune.methods.base import Method, freeze, weights_path, write_meta

# attention projections + MLP linears, per model_type
TARGETS = {
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers: PEFT handles fan_in_fan_out
}


def target_modules(model: torch.nn.Module, cfg: MethodConfig) -> list[str] | str:
    if cfg.target_modules:
        return list(cfg.target_modules)
    return TARGETS.get(model.config.model_type, "all-linear")


class Lora(Method):
    name = "lora"
    weights_file = "adapter_model.safetensors"
    config_keys = ("r", "alpha", "dropout", "target_modules")

    def describe(self, cfg: MethodConfig) -> str:
        where = ", ".join(cfg.target_modules) if cfg.target_modules else "attention+MLP"
        return f"LoRA r={cfg.r} α={cfg.alpha} on {where}"

    def _config(self, model, cfg: MethodConfig):
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=target_modules(model, cfg),
            fan_in_fan_out=model.config.model_type == "gpt2",
        )

    def prepare(self, model, tokenizer, cfg: MethodConfig):
        from peft import get_peft_model

        freeze(model)
        try:
            return get_peft_model(model, self._config(model, cfg))
        except ValueError as e:
            raise UserError(f"method.target_modules: {str(e).splitlines()[0]}") from None

    def save(self, model, directory: Path, meta: dict) -> None:
        with atomic_dir(directory) as tmp:
            model.save_pretrained(tmp)
            write_meta(tmp, meta)

    def check_adapter(self, directory: Path) -> None:
        """One-line errors for a truncated or corrupt adapter or another PEFT type (before PEFT reads it)."""
        load_tensors(weights_path(directory, self.weights_file))
        peft_type = read_json(Path(directory) / "adapter_config.json").get("peft_type")
        if peft_type != "LORA":
            raise UserError(f"{directory} holds a {peft_type} adapter, not LoRA; load it as its own method")

    def load(self, model, tokenizer, directory: Path, cfg: MethodConfig):
        from peft import PeftModel

        self.check_adapter(directory)
        freeze(model)
        return PeftModel.from_pretrained(model, str(directory), is_trainable=False)

    def merged(self, model):
        return model.merge_and_unload()
