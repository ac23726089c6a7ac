"""Metrics: ROUGE of generated summaries (Google's `rouge-score`, Lsum on split sentences) and the loss
over summary tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sumtune.sentences import split_sentences

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _scorer(keys: tuple[str, ...]) -> RougeScorer:
    # late: rouge-score and absl (0.4 s to import) only to score; reports import this module for its keys
    from absl import logging as absl_logging  # rouge-score logs "Using default tokenizer." at INFO
    from rouge_score import rouge_scorer

    absl_logging.set_verbosity(absl_logging.WARNING)
    return rouge_scorer.RougeScorer(list(keys), use_stemmer=True)


def rouge_per_example(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """F1 of ROUGE-1/2/L/Lsum for each example, in order, stemming on (values in 0..1): the unit that a
    bootstrap over documents resamples. ROUGE-1/2/L are rouge-score's on the raw strings; for Lsum both
    sides are first split into sentences (`sentences.split_sentences`, newlines included) and joined
    with newlines, as is standard, since rouge-score's Lsum only sees newlines as boundaries."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    plain, lsum = _scorer(ROUGE_KEYS[:3]), _scorer(("rougeLsum",))
    out: dict[str, list[float]] = {k: [] for k in ROUGE_KEYS}
    for pred, ref in zip(predictions, references):
        scores = plain.score(ref, pred)  # (target, prediction)
        scores |= lsum.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for k in ROUGE_KEYS:
            out[k].append(scores[k].fmeasure)
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean over examples of `rouge_per_example` (a mean of example F1s, not a corpus-level F1)."""
    per_example = rouge_per_example(predictions, references)
    return {k: sum(v) / len(v) for k, v in per_example.items()}


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy, number of tokens) over the positions whose label is not -100.

    `logits` [B, T, V] are aligned with the inputs (position t predicts label t+1)."""
    targets = labels[:, 1:]
    keep = targets != -100
    picked = logits[:, :-1][keep].float()  # only the scored positions, not the article
    return F.cross_entropy(picked, targets[keep], reduction="sum"), int(keep.sum())
