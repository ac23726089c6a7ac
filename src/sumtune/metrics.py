"""Metrics: ROUGE of generated summaries (Google's `rouge-score`) and the loss over summary tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F1 over examples of ROUGE-1/2/L/Lsum, stemming on; ROUGE-Lsum treats each line as a sentence
    (references and predictions hold one highlight per line). Values in 0..1."""
    from absl import logging as absl_logging  # rouge-score logs "Using default tokenizer." at INFO
    from rouge_score import rouge_scorer

    absl_logging.set_verbosity(absl_logging.WARNING)

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for k in ROUGE_KEYS:
            totals[k] += scores[k].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy, number of tokens) over the positions whose label is not -100.

    `logits` [B, T, V] are aligned with the inputs (position t predicts label t+1)."""
    targets = labels[:, 1:]
    keep = targets != -100
    picked = logits[:, :-1][keep].float()  # only the scored positions, not the article
    return F.cross_entropy(picked, targets[keep], reduction="sum"), int(keep.sum())


class TokenLoss:
    """Token-weighted mean loss: sum over batches of summed losses / total number of summary tokens
    (a batch of long summaries weighs more than one of short ones, unlike a mean of batch means)."""

    def __init__(self) -> None:
        self.total, self.tokens = 0.0, 0

    def add(self, summed: float | torch.Tensor, tokens: int) -> None:
        self.total += float(summed)
        self.tokens += tokens

    @property
    def mean(self) -> float:
        if self.tokens == 0:
            raise ValueError("no summary tokens were scored")
        return self.total / self.tokens
