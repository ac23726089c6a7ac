"""Work split over the processes of an `accelerate launch` and gathered back in input order
(`sumtune evaluate` on several processes writes what one process writes).

Why whole batches are dealt out rather than rows: a batch's padding changes the float32
arithmetic of every row in it, so a prediction (an argmax, a beam ranking) or a loss could
differ by the last bit from the one-process run if rows met other batch-mates. Each process
gets whole batches of the one-process batch order (batch b to process b mod P), computes
exactly what one process computes for them, and the results are put back by index.
"""

from __future__ import annotations

from typing import Any

import torch


def process_state():
    """Accelerate's PartialState (process group from the launcher's environment; a single
    process without one), on the CPU where there is no CUDA (gloo)."""
    # late: accelerate only to evaluate or train (serve decodes without it)
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def batch_order(lengths: list[int], per_batch: int) -> list[list[int]]:
    """The one-process batches: indices longest first (stable), `per_batch` at a time."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + per_batch] for s in range(0, len(order), per_batch)]


def batch_shard(lengths: list[int], per_batch: int, rank: int, world: int) -> list[int]:
    """This process's indices: batches rank, rank+P, ... of `batch_order`, concatenated. They
    stay longest first, so a consumer that sorts by length and cuts `per_batch` at a time
    (`decoding.Generator.generate`) forms exactly those batches again."""
    return [i for batch in batch_order(lengths, per_batch)[rank::world] for i in batch]


def gather_in_order(values: list[Any], indices: list[int], n: int, state) -> list[Any]:
    """Every process's `values` (for its `indices`) gathered into one list of length `n` in
    input order, on every process."""
    # late: accelerate only to evaluate or train (serve decodes without it)
    from accelerate.utils import gather_object

    if state.num_processes == 1:
        out = [None] * n
        for i, v in zip(indices, values):
            out[i] = v
        return out
    pairs = gather_object(list(zip(indices, values)))
    out = [None] * n
    for i, v in pairs:
        out[i] = v
    return out


def sum_over_processes(values: list[float], state) -> list[float]:
    """Element-wise sums of `values` over the processes, added in rank order (the same on each)."""
    # late: accelerate only to evaluate or train (serve decodes without it)
    from accelerate.utils import gather_object

    if state.num_processes == 1:
        return list(values)
    parts = gather_object([list(values)])
    return [sum(p[k] for p in parts) for k in range(len(values))]
