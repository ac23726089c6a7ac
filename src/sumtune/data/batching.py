"""Batching token examples: dynamic padding, the seeded order of an epoch, and the micro-batches
of one optimizer step.

A step's micro-batches, which the trainer's exactness rests on (training.step):
- Processes. Micro-batch m of process r is the step's slice [m*B*P + r*B, +B). A slice left
  empty at the end of an epoch becomes a filler (the step's first sample, not counted), so
  every process runs as many forward/backward passes as the others.
- Token budget (train.max_tokens_per_batch). A step still takes the same samples and each
  process the same rows of them (so the data position, the schedule and resume are as
  with row batching); only how a process cuts its rows into forward passes changes: longest
  first, each pass up to the budget in padded tokens. Processes run as many passes as the
  one with the most (fillers), which every process computes alike from the row lengths.
"""

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


def micro_batches(ds, chunk: list[int], batch_size: int, world: int, rank: int,
                  collate) -> list[tuple[dict, bool]]:
    """This process's micro-batches for one optimizer step over `chunk` (the step's sample
    indices in order), as (batch, counts): micro-batch m is the slice [m*B*P + rank*B, +B).
    A slice left empty at the end of an epoch becomes a filler (the step's first sample,
    counts=False), so every process steps alike."""
    micro = batch_size * world
    out = []
    for start in range(0, len(chunk), micro):
        mine = chunk[start + rank * batch_size:start + (rank + 1) * batch_size]
        out.append((collate(rows_of(ds, mine or chunk[:1])), bool(mine)))
    return out


def token_batches(ds, chunk: list[int], batch_size: int, world: int, rank: int, collate,
                  max_tokens: int, lengths: list[int]) -> list[tuple[dict, bool]]:
    """As `micro_batches`, with this process's rows of the step (the same rows) packed into
    forward passes of at most `max_tokens` padded tokens (a longer row alone)."""
    micro = batch_size * world
    packs = []
    for r in range(world):
        rows = [i for start in range(0, len(chunk), micro) for i in chunk[start + r * batch_size:start + (r + 1) * batch_size]]
        packs.append(pack_by_tokens(sorted(rows, key=lambda i: -lengths[i]), lengths, max_tokens))
    mine = [(collate(rows_of(ds, group)), True) for group in packs[rank]]
    filler = collate(rows_of(ds, chunk[:1]))
    return mine + [(filler, False)] * (max(len(p) for p in packs) - len(mine))


def pack_by_tokens(rows: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive `rows` (longest first) grouped so that rows x the longest row <= max_tokens."""
    groups: list[list[int]] = []
    for i in rows:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def rows_of(ds, idx: list[int]) -> list[dict[str, list[int]]]:
    """Rows `idx` of a tokenised split as dicts of token lists (what a Collator takes)."""
    cols = ds[idx]
    return [{"input_ids": i, "labels": la} for i, la in zip(cols["input_ids"], cols["labels"])]
