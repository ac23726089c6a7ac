"""Full fine-tuning: every parameter trains (the upper baseline). The saved weights
are the whole model (tied tensors once, under their first name)."""

from __future__ import annotations

from pathlib import Path

from sumtune.methods.base import Method, freeze, load_params, save_params
from sumtune.methods.full.config import FullConfig


class Full(Method):
    name = "full"
    config_class = FullConfig
    serving = "weights"
    shards = True
    weights_file = "weights.safetensors"

    def describe(self, cfg: FullConfig) -> str:
        return "all weights"

    def prepare(self, model, tokenizer, cfg: FullConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, meta: dict) -> None:
        save_params(model, directory, meta, self.weights_file)

    def load(self, model, tokenizer, directory: Path, cfg: FullConfig):
        freeze(model)
        load_params(model, directory, self.weights_file, [n for n, _ in model.named_parameters()])
        return model

    def merged(self, model):
        return model
