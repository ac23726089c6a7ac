"""Model selection by generated ROUGE (`train.select_by: rouge1 | rouge2 | rougeL | rougeLsum`).

At each validation the first `eval.select_samples` rows of the validation split (in the split's
own order, so the same articles every time and for every training seed) are summarised with
the run's decoding (`eval.*`, as `sumtune evaluate` resolves it) and scored with
`metrics.rouge`; the trainer keeps the checkpoint with the best score and stops early by it.
The test split is never read here.

Why a copy of the model: the training model carries the training fast paths (and, under DDP,
its wrapper); decoding wants `evaluate`'s set-up (`fast_paths_for_decoding`: every linear cast
once, the tied head untied, few-rows head). So a copy is made before the training fast paths
are applied, sharing the frozen base weights with the training model (no second copy of the
base); at each validation the trained weights are copied into it and the decoding fast paths
applied afresh, so it decodes with exactly the weights and set-up `evaluate` would load from
RUN/adapter. Under DDP every process decodes its share of the articles (`generate_summaries`,
as distributed `evaluate`) and the summaries are gathered, so every process computes the same
score and takes the same decision.

The experiment trackers' sample predictions (training.trackers) are the first
train.log_predictions of these decodes; a run selecting by loss makes the same copy to decode
only those rows (`rows`), when a tracker with tables is on.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch

from sumtune.bootstrap import bootstrap_ci
from sumtune.config import Config
from sumtune.decoding.summaries import generate_summaries
from sumtune.fastpath import fast_paths_for_decoding, revert_fast_paths
from sumtune.metrics import rouge_per_example
from sumtune.modeling import autocast_dtype

BOOTSTRAP_RESAMPLES = 1000  # as `evaluate`'s intervals, with the same seed (train.seed)


class Selection:
    """The decoding copy of a method model and how to score it on the fixed validation subset."""

    def __init__(self, cfg: Config, model: torch.nn.Module, tokenizer, precision: str, accelerator,
                 rows: int | None = None):
        """`model`: the method model before the training fast paths are applied; `rows`: how many
        validation rows to decode (default eval.select_samples)."""
        self.cfg, self.tokenizer, self.accelerator = cfg, tokenizer, accelerator
        self.n = cfg.eval.select_samples if rows is None else rows
        self.examples: list[dict[str, Any]] = []  # the latest decodes: article, reference, prediction, rougeL
        self.autocast = autocast_dtype(precision)
        self.names = [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}  # shared, not copied
        self.decoder = copy.deepcopy(model, memo=frozen).to(accelerator.device).eval()
        self._params = dict(self.decoder.named_parameters(remove_duplicate=False))
        self._logged = False  # the decoding fast paths are logged at the first validation only

    def check_names(self, model: torch.nn.Module) -> None:
        """The training model (fast paths applied) still names every trained weight as the copy does."""
        missing = set(self.names) - {n for n, _ in model.named_parameters(remove_duplicate=False)}
        if missing:
            raise RuntimeError(f"selection: trained weights not found in the training model: {sorted(missing)[:3]}")

    def rows(self, validation) -> tuple[list[str], list[str]]:
        """(articles, references): the first `n` rows of the validation split."""
        subset = validation.select(range(min(self.n, len(validation))))
        return list(subset["article"]), list(subset["summary"])

    def score(self, model: torch.nn.Module, validation) -> dict[str, Any]:
        """Mean ROUGE F1 (0..1) of the current weights of `model` (as trained, possibly DDP-wrapped) on
        the subset of `validation`, with their 95% bootstrap intervals over the documents (`ci95`),
        `select_n` and `select_seconds` (all of this call)."""
        t0 = time.perf_counter()
        per = self.decode(model, validation)
        seed = self.cfg.train.seed
        return {**{k: sum(v) / len(v) for k, v in per.items()},
                "ci95": {k: list(bootstrap_ci(v, BOOTSTRAP_RESAMPLES, seed)) for k, v in per.items()},
                "select_n": len(per["rougeL"]), "select_seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def decode(self, model: torch.nn.Module, validation) -> dict[str, list[float]]:
        """Summarise the subset with the current weights of `model`; the per-document ROUGE F1
        (`metrics.rouge_per_example`), the rows kept in `examples`."""
        articles, references = self.rows(validation)
        trained = dict(self.accelerator.unwrap_model(model).named_parameters(remove_duplicate=False))
        for name in self.names:  # into the fp32 weights (no decoding fast path is applied between calls)
            self._params[name].copy_(trained[name])
        fastpath_log = logging.getLogger("sumtune.fastpath")
        level = fastpath_log.level
        if self._logged:
            fastpath_log.setLevel(logging.WARNING)
        try:
            fast_paths_for_decoding(self.decoder, self.cfg, self.autocast)  # as `evaluate` sets a loaded run up
        finally:
            fastpath_log.setLevel(level)
        self._logged = True
        try:
            predictions, _ = generate_summaries(self.decoder, self.tokenizer, self.cfg, self.autocast, articles,
                                                False, self.accelerator)
        finally:
            revert_fast_paths(self.decoder)  # frees the decoding casts until the next validation
        per = rouge_per_example(predictions, references)
        self.examples = [{"article": a, "reference": r, "prediction": p, "rougeL": s}
                         for a, r, p, s in zip(articles, references, predictions, per["rougeL"])]
        return per
