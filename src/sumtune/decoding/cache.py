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
    """One layer's keys/values in beam search with the lean step (`decoding.lean`): views into its
    `BeamCache`'s buffers: the prompt's once per entry, [entries, heads, width, head_dim] (the k beams
    of an entry, rows e*k .. e*k+k-1, share it), and the generated positions per beam,
    [rows, heads, limit, head_dim]."""

    def __init__(self, prompt: torch.Tensor, gen: torch.Tensor, beams: int, n: int = 0):
        self.prompt_k, self.prompt_v, self.gen_k, self.gen_v = prompt[0], prompt[1], gen[0], gen[1]
        self.beams, self.n = beams, n

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write one new position of every row ([rows, heads, 1, head_dim])."""
        self.gen_k[:, :, self.n] = key_states[:, :, 0]
        self.gen_v[:, :, self.n] = value_states[:, :, 0]
        self.n += 1

    def get_seq_length(self) -> int:
        return self.prompt_k.shape[2] + self.n

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's keys and values as one [rows, heads, width + n, head_dim] each (what a cache of
        one row per beam holds: for tests)."""
        return tuple(torch.cat([prompt.repeat_interleave(self.beams, 0), gen[:, :, : self.n]], dim=2)
                     for prompt, gen in ((self.prompt_k, self.gen_k), (self.prompt_v, self.gen_v)))


class BeamCache:
    """The keys/values of a beam-search batch for the lean step, every layer in one buffer for the
    prompts [layers, 2, entries, heads, width, head_dim] and one for the generated positions
    [layers, 2, rows, heads, limit, head_dim]: reordering beams or dropping done entries is one copy for
    all layers, not one per layer and tensor. `layers`: a `BeamLayer` (views) per layer."""

    def __init__(self, prompt: torch.Tensor, beams: int, limit: int):
        layers, _, entries, heads, _, dim = prompt.shape
        self.prompt, self.beams = prompt, beams
        self.gen = prompt.new_empty((layers, 2, entries * beams, heads, limit, dim))
        self._views(0)

    def _views(self, n: int) -> None:
        self.layers = [BeamLayer(self.prompt[j], self.gen[j], self.beams, n) for j in range(len(self.gen))]

    def get_seq_length(self) -> int:
        return self.layers[0].get_seq_length()

    def reorder(self, moved: torch.Tensor, sources: torch.Tensor) -> None:
        """Rows `moved` take rows `sources`' generated keys/values (beams of one entry: the prompt is theirs already)."""
        n = self.layers[0].n
        if n:
            self.gen[:, :, moved, :, :n] = self.gen[:, :, sources, :, :n]  # the right side is a copy

    def select(self, rows: torch.Tensor) -> None:
        """Keep the given rows, whole entries only (compaction: `rows` lists every beam of each kept entry)."""
        n = self.layers[0].n
        self.prompt = self.prompt[:, :, rows[:: self.beams] // self.beams]
        gen = self.gen.new_empty((*self.gen.shape[:2], len(rows), *self.gen.shape[3:]))
        gen[:, :, :, :, :n] = self.gen[:, :, rows, :, :n]
        self.gen = gen
        self._views(n)


def shared_prompts(cache: Cache, beams: int, limit: int) -> BeamCache:
    """A left-padded batch of prompts (`left_padded` with capacity = their width, one row per entry)
    as a `BeamCache`: the prompt stays once per entry, the beams' positions follow."""
    return BeamCache(torch.stack([torch.stack([layer.buf_k, layer.buf_v]) for layer in cache.layers]), beams, limit)


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
    if isinstance(cache, BeamCache):
        cache.select(rows)
        return
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
    if isinstance(cache, BeamCache):
        cache.reorder(moved, sources)
        return
    for layer in cache.layers:
        layer.reorder(moved, sources, start)
