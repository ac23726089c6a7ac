"""Zero-shot: the base model as it is, no training. Its run directory holds only the
metadata, so evaluate and compare treat the baseline like any other run."""

from __future__ import annotations

from pathlib import Path

from sumtune.io import atomic_dir
from sumtune.methods.base import Method, freeze, write_meta
from sumtune.methods.zero_shot.config import ZeroShotConfig


class ZeroShot(Method):
    name = "zero_shot"
    config_class = ZeroShotConfig
    serving = "base"
    trains = False

    def describe(self, cfg: ZeroShotConfig) -> str:
        return "nothing (base model)"

    def prepare(self, model, tokenizer, cfg: ZeroShotConfig):
        freeze(model)
        return model

    def save(self, model, directory: Path, meta: dict) -> None:
        with atomic_dir(directory) as tmp:
            write_meta(tmp, meta)

    def load(self, model, tokenizer, directory: Path, cfg: ZeroShotConfig):
        freeze(model)
        return model

    def merged(self, model):
        return model
