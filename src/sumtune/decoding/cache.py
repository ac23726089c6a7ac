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


class BeamLayer:
    """One layer's keys/values in beam search with the lean step (`decoding.lean`): the prompt's once
    per entry, [entries, heads, width, head_dim] (the k beams of an entry, rows e*k .. e*k+k-1, share
    it), and the generated positions per beam, [rows, heads, limit, head_dim]."""

    def __init__(self, prompt_k: torch.Tensor, prompt_v: torch.Tensor, beams: int, limit: int):
        self.prompt_k, self.prompt_v, self.beams, self.n = prompt_k, prompt_v, beams, 0
        shape = (prompt_k.shape[0] * beams, prompt_k.shape[1], limit, prompt_k.shape[3])
        self.gen_k, self.gen_v = prompt_k.new_empty(shape), prompt_v.new_empty(shape)

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new position of every row ([rows, heads, 1, head_dim]); the generated keys and values so far."""
        self.gen_k[:, :, self.n] = key_states[:, :, 0]
        self.gen_v[:, :, self.n] = value_states[:, :, 0]
        self.n += 1
        return self.gen_k[:, :, : self.n], self.gen_v[:, :, : self.n]

    def get_seq_length(self) -> int:
        return self.prompt_k.shape[2] + self.n

    def reorder(self, moved: torch.Tensor, sources: torch.Tensor, start: int) -> None:
        """Rows `moved` take rows `sources`' generated keys/values (beams of one entry: the prompt is theirs already)."""
        if self.n:
            for buf in (self.gen_k, self.gen_v):
                buf[moved, :, : self.n] = buf[sources, :, : self.n]  # the right side is a copy

    def select(self, rows: torch.Tensor) -> None:
        """Keep the given rows, whole entries only (compaction: `rows` lists every beam of each kept entry)."""
        entries = rows[:: self.beams] // self.beams
        self.prompt_k, self.prompt_v = self.prompt_k[entries], self.prompt_v[entries]
        for name in ("gen_k", "gen_v"):
            old = getattr(self, name)
            new = old.new_empty((len(rows), *old.shape[1:]))
            new[:, :, : self.n] = old[rows, :, : self.n]
            setattr(self, name, new)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's keys and values as one [rows, heads, width + n, head_dim] each (what a cache of
        one row per beam holds: for tests)."""
        return tuple(torch.cat([prompt.repeat_interleave(self.beams, 0), gen[:, :, : self.n]], dim=2)
                     for prompt, gen in ((self.prompt_k, self.gen_k), (self.prompt_v, self.gen_v)))


class BeamCache:
    """The layers of a beam-search batch for the lean step (it reads `layers` only)."""

    def __init__(self, layers: list[BeamLayer]):
        self.layers = layers

    def get_seq_length(self) -> int:
        return self.layers[0].get_seq_length()


def shared_prompts(cache: Cache, beams: int, limit: int) -> BeamCache:
    """A left-padded batch of prompts (`left_padded` with capacity = their width, one row per entry)
    as beam layers: the prompt stays once per entry, the beams' positions follow."""
    return BeamCache([BeamLayer(layer.buf_k, layer.buf_v, beams, limit) for layer in cache.layers])


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


def select_rows(cache: Cache | BeamCache, rows: torch.Tensor) -> None:
    """Keep (or repeat) the given rows of every layer."""
    for layer in cache.layers:
        layer.select(rows)


def reorder_beams(cache: Cache | BeamCache, rows: torch.Tensor, start: int) -> None:
    """`select_rows(cache, rows)` for beams, in place: row i becomes row rows[i], where every row i and rows[i]
    hold the same keys/values before position `start` (the beams of one entry share their padded prompt), so
    only the positions from `start` on - the generated ones - are copied, and only for rows that change."""
    moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero().squeeze(1)
    if len(moved) == 0:
        return
    sources = rows[moved]
    for layer in cache.layers:
        layer.reorder(moved, sources, start)
