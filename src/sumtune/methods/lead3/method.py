"""Lead-3: the summary is the article's first three sentences, one per line, split by the splitter
ROUGE-Lsum uses (`sumtune.sentences.leading_sentences`: Lsum sees exactly these three lines). No
model, no training, no decoding: `needs_model` is False, so `sumtune train` writes its run directory
(the metadata, no weights) without loading one, and `evaluate`, `summarize` and `plan` call
`summarize` instead of a model."""

from __future__ import annotations

from pathlib import Path

from sumtune.errors import UserError
from sumtune.io import atomic_dir
from sumtune.methods.base import Method, write_meta
from sumtune.methods.lead3.config import Lead3Config
from sumtune.sentences import leading_sentences

SENTENCES = 3


class Lead3(Method):
    name = "lead3"
    config_class = Lead3Config
    trains = False
    needs_model = False
    not_exportable = f"it has no model: its summary is the article's first {SENTENCES} sentences"

    def describe(self, cfg: Lead3Config) -> str:
        return f"no model: the article's first {SENTENCES} sentences"

    def summarize(self, articles: list[str], cfg: Lead3Config) -> list[str]:
        return ["\n".join(leading_sentences(a, SENTENCES)) for a in articles]

    def prepare(self, model, tokenizer, cfg: Lead3Config):
        raise UserError(f"{self.name} uses no model: {self.not_exportable}")

    def save(self, model, directory: Path, meta: dict) -> None:
        with atomic_dir(directory) as tmp:
            write_meta(tmp, meta)

    def load(self, model, tokenizer, directory: Path, cfg: Lead3Config):
        raise UserError(f"{self.name} uses no model: {self.not_exportable}")

    def serve_refusal(self, cfg: Lead3Config) -> str:
        return f"{self.name} (no model)"
