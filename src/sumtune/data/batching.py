"""Batching token examples: dynamic padding and the seeded order of an epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Collator:
    """Right-pads a list of token examples to the longest in the batch (never to max_length)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(
    n: int, seed: int, epoch: int, lengths: list[int] | None = None, group_by_length: bool = False,
    batch_size: int = 1,
) -> list[int]:
    """The sample order of one epoch: a permutation that depends only on (seed, epoch).

    With ``group_by_length``, the permutation is cut into mega-batches of 50 batches,
    each sorted by length (longest first), so batches pad less; the order then also
    depends on the batch size.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if not group_by_length:
        return order
    if lengths is None:
        raise ValueError("group_by_length needs lengths")
    mega = max(batch_size * 50, 1)
    out: list[int] = []
    for i in range(0, n, mega):
        out.extend(sorted(order[i : i + mega], key=lambda j: -lengths[j]))
    return out
