"""Frozen-feature cache for head-only tuning (`last_layers` with `last_k_blocks: 0`).

When nothing outside the LM head and the final layer norm trains and the body has
no active dropout, the body maps a sample to the same hidden states in every epoch.
The first time a sample is seen, its hidden states at the positions that predict a
label are computed (without autograd: nothing in the body trains) and stored; from
then on the sample costs only the head. The cache is keyed by the sample's tokens, so
training and validation samples alike hit it, whatever the order of the batches.

`CachedHeadLoss.for_model` uses it only where this is exact: the head trains (optionally
with the norm), or `train_head: false` with only the norm (the frozen head, tied to the
input embeddings, is applied as it is). As soon as a block trains (`last_k_blocks >= 1`,
with or without the head) the features change every step: the trainer then uses the
plain label-positions loss (loss.py).

Storage is bounded: entries stay in memory up to `max_memory_mb`, the rest are
appended to a file in a temporary directory and read back with one `pread` each.
Entries keep the dtype the body produced; under bf16 autocast they are stored in
bf16, which is what the head would have received anyway.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import torch
from torch import nn

from sumtune.architecture import decoder_parts
from sumtune.errors import UserError
from sumtune.fastpath.base import FastPathContext, StepPath
from sumtune.fastpath.loss import final_hidden, find_head, head_loss_sum, label_positions


class FeatureCache:
    """Tensors by key, in memory up to a bound, then in a spill file."""

    def __init__(self, max_memory_mb: float = 1024, spill_dir: str | None = None):
        self.max_bytes = int(max_memory_mb * 2**20)
        self.mem: dict[bytes, torch.Tensor] = {}
        self.disk: dict[bytes, tuple[int, tuple[int, ...], torch.dtype]] = {}
        self.mem_bytes = 0
        self._spill_parent = spill_dir
        self._dir: str | None = None
        self._fd: int | None = None
        self._end = 0

    def __len__(self) -> int:
        return len(self.mem) + len(self.disk)

    def get(self, key: bytes) -> torch.Tensor | None:
        t = self.mem.get(key)
        if t is not None:
            return t
        where = self.disk.get(key)
        if where is None:
            return None
        offset, shape, dtype = where
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        data = bytearray(os.pread(self._fd, n, offset))
        return torch.frombuffer(data, dtype=dtype).view(shape)

    def put(self, key: bytes, value: torch.Tensor) -> None:
        value = value.detach().to("cpu").contiguous()
        size = value.numel() * value.element_size()
        if self.mem_bytes + size <= self.max_bytes:
            self.mem[key] = value
            self.mem_bytes += size
            return
        if self._fd is None:
            self._dir = tempfile.mkdtemp(prefix="sumtune-features-", dir=self._spill_parent)
            self._fd = os.open(os.path.join(self._dir, "features.bin"), os.O_RDWR | os.O_CREAT, 0o600)
        raw = value.view(torch.uint8).reshape(-1).numpy().tobytes() if size else b""
        os.pwrite(self._fd, raw, self._end)
        self.disk[key] = (self._end, tuple(value.shape), value.dtype)
        self._end += size

    def close(self) -> None:
        """Drop everything and delete the spill file."""
        self.mem.clear()
        self.disk.clear()
        self.mem_bytes = 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self):
        self.close()


def _row_key(*tensors: torch.Tensor) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(t.to(torch.int64).cpu().numpy().tobytes())
        h.update(b"|")
    return h.digest()


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The final norm of any decoder-only model (`sumtune.architecture`), None where there is none."""
    try:
        return decoder_parts(model).final_norm
    except UserError:
        return None


class CachedHeadLoss:
    """`token_loss_sum(model, batch)` for head-only tuning with the body's features cached.

    Build it with `for_model`, which returns None unless the cache is exact for the model:
    every trainable parameter is in the LM head or the final layer norm, and no dropout
    module can fire. With a trainable final norm the cache holds its input."""

    def __init__(self, head: nn.Module, norm: nn.Module | None, cache: FeatureCache):
        self.head, self.norm, self.cache = head, norm, cache

    @staticmethod
    def parts(model: nn.Module) -> tuple[nn.Module, nn.Module | None] | None:
        """(head, trained final norm or None) when the cache is exact for `model` (see the class doc), else None."""
        head = find_head(model)
        norm = _final_norm(model)
        if norm is not None and not any(p.requires_grad for p in norm.parameters()):
            norm = None
        allowed = {id(p) for m in (head, norm) if m is not None for p in m.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable or any(id(p) not in allowed for p in trainable):
            return None
        if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
            return None
        return head, norm

    @classmethod
    def for_model(cls, model: nn.Module, cache: FeatureCache | None = None) -> CachedHeadLoss | None:
        parts = cls.parts(model)
        if parts is None:
            return None
        return cls(*parts, cache if cache is not None else FeatureCache())

    def _features(self, model, ids, mask, end, pos) -> torch.Tensor:
        key = _row_key(ids[:end], mask[:end], pos)
        f = self.cache.get(key)
        if f is None:
            with torch.no_grad():
                f = final_hidden(model, ids[None, :end], mask[None, :end], before=self.norm)[0, pos]
            self.cache.put(key, f)
        return f.to(ids.device)

    # The trainer may pass all micro-batches of an optimizer step at once (`step_loss`): the
    # head then runs one forward and one backward over the step's rows instead of one per
    # micro-batch, so the [vocab, hidden] gradient is computed, cast and accumulated once.
    # `bench/profile_step.py --method last_layers` times the cached epochs and lists their ops.
    whole_step = True

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.step_loss(model, [batch])

    def step_loss(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, int]:
        """The summed token loss over every row of `batches`, and the number of target tokens."""
        feats, targets = [], []
        for batch in batches:
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            for r in range(ids.shape[0]):
                pos, tgt = label_positions(labels[r])
                if pos.numel():
                    feats.append(self._features(model, ids[r], mask[r], int(pos[-1]) + 1, pos))
                    targets.append(tgt)
        if not feats:
            return torch.zeros((), device=batches[0]["input_ids"].device, requires_grad=True), 0
        x = torch.cat(feats)
        if self.norm is not None:
            x = self.norm(x)
        return head_loss_sum(self.head, x, torch.cat(targets)), x.shape[0]


class FeatureCachePath(StepPath):
    """The cached head loss (`select_loss` picks it): single process only, as each process would
    fill its own cache with its own rows."""

    name = "feature_cache"
    why = "only the head (and final norm) trains: the body's features are computed once per sample"

    def applies_to(self, model: nn.Module, ctx: FastPathContext) -> bool:
        return ctx.training and not ctx.distributed and CachedHeadLoss.parts(model) is not None
