"""The key/value cache of a decoding batch: one preallocated buffer per layer.

The rows' prefilled caches go, left-padded, into the buffer, laid out
``[pad...][soft prompt][prompt][generated...]``: each row stays contiguous, so
sliding-window attention (GPT-Neo's local layers) sees the same neighbours as in an
unbatched run, and position ids count real tokens only (as ``generate`` does with left
padding). Appending a token writes in place, with no copy of the whole cache per step. Beam
search reorders in place too, copying only the generated positions of the beams that change
(``reorder_beams``: the beams of one entry share their prompt's keys/values), where
``generate`` copies every row's whole cache at every step.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from sumtune.methods.base import LayerKV  # one prefilled row's layer: [1, heads, length, head_dim] each


class SlotLayer(DynamicLayer):
    """One layer's keys/values in a preallocated buffer [rows, heads, capacity, head_dim]."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.buf_k, self.buf_v, self.length = keys, values, length
        self.device, self.is_initialized = keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self.buf_k[:, :, self.length : self.length + n] = key_states
        self.buf_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder(self, moved: torch.Tensor, sources: torch.Tensor, start: int) -> None:
        """Rows `moved` take rows `sources`' keys/values from position `start` on, in place."""
        if self.length > start:
            for buf in (self.buf_k, self.buf_v):
                buf[moved, :, start : self.length] = buf[sources, :, start : self.length]  # the right side is a copy

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the given rows; only the filled part is copied."""
        for name in ("buf_k", "buf_v"):
            old = getattr(self, name)
            new = old.new_empty((len(rows), *old.shape[1:]))
            new[:, :, : self.length] = old[rows, :, : self.length]
            setattr(self, name, new)
        self._views()


def cache_keyword(lm: nn.Module) -> str:
    """The name under which `lm.forward` takes the cache."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def max_positions(lm: nn.Module) -> int:
    cfg = lm.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1 << 30))


def left_padded(prefills: list[list[LayerKV]], lengths: list[int], capacity: int,
                device: torch.device) -> tuple[Cache, torch.Tensor]:
    """The rows' prefilled caches (row i: `lengths[i]` positions, per layer) laid out right-aligned
    at the longest length in buffers of `capacity` positions, and the attention mask [rows, capacity]."""
    width = max(lengths)
    layers = []
    for j, (k0, _) in enumerate(prefills[0]):
        shape = (len(prefills), k0.shape[1], capacity, k0.shape[3])
        keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
        for i, kv in enumerate(prefills):
            keys[i, :, width - lengths[i] : width] = kv[j][0][0]
            values[i, :, width - lengths[i] : width] = kv[j][1][0]
        layers.append(SlotLayer(keys, values, width))
    mask = torch.ones(len(prefills), capacity, dtype=torch.long, device=device)
    for i, n in enumerate(lengths):
        mask[i, : width - n] = 0
    return Cache(layers=layers), mask


def select_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Keep (or repeat) the given rows of every layer."""
    for layer in cache.layers:
        layer.select(rows)


def reorder_beams(cache: Cache, rows: torch.Tensor, start: int) -> None:
    """`select_rows(cache, rows)` for beams, in place: row i becomes row rows[i], where every row i and rows[i]
    hold the same keys/values before position `start` (the beams of one entry share their padded prompt), so
    only the positions from `start` on - the generated ones - are copied, and only for rows that change."""
    moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero().squeeze(1)
    if len(moved) == 0:
        return
    sources = rows[moved]
    for layer in cache.layers:
        layer.reorder(moved, sources, start)
