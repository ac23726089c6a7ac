"""Full fine-tuning: every parameter trains (the upper baseline). The saved weights
are the whole model (tied tensors once, under their first name)."""

from __future__ import annotations

from pathlib import Path

from sumtune.config import MethodConfig
from sumtune.methods.base import Method, freeze, load_params, save_params


class Full(Method):
    name = "full"
    weights_file = "weights.safetensors"

    def describe(self, cfg: MethodConfig) -> str:
        return "all weights"

    def prepare(self, model, tokenizer, cfg: MethodConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, meta: dict) -> None:
        save_params(model, directory, meta, self.weights_file)

    def load(self, model, tokenizer, directory: Path, cfg: MethodConfig):
        freeze(model)
        load_params(model, directory, self.weights_file, [n for n, _ in model.named_parameters()])
        return model

    def merged(self, model):
        return model
