"""Where a decoding run's time goes, for bench/generate.py: the model's forward timed per call and
split into prefill (prompts) and incremental steps, with what each had to compute or read, and the
peaks they are set against (the matmul peak comes from `mfu.py`, the copy bandwidth from here).

Counts come from the config through Transformers' standard attribute names, so any decoder-only
family is read alike (GPT-2's n_layer and GPT-Neo's num_layers answer to num_hidden_layers through
the config's attribute map): layers, query heads x head_dim for attention FLOPs, key/value heads x
head_dim for the bytes of the cache (grouped-query attention stores fewer heads than it queries),
and which layers attend through a window (GPT-Neo's "local" layers, `layer_types`' sliding ones).
"""

from __future__ import annotations

import statistics
import time

import torch

from sumtune import flops
from sumtune.architecture import causal_lm
from sumtune.decoding import lean


class Phases:
    """Forward seconds of a causal LM per call, split into prefill (more than one new position a row)
    and incremental steps, with what each call had to compute or read: (kind, seconds, real lengths).
    Steps through sumtune's lean decode step (`sumtune.decoding.lean`) are timed alike."""

    def __init__(self, lm: torch.nn.Module):
        self.calls: list[tuple[str, float, list[int]]] = []
        self._cuda = next(lm.parameters()).device.type == "cuda"
        step = lean.step_for(causal_lm(lm))
        self._handles = [h for m in (lm, step) if m is not None for h in
                         (m.register_forward_pre_hook(self._pre, with_kwargs=True), m.register_forward_hook(self._post))]

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        rows, q = ids.shape
        # real positions of each row after this call: its mask (left padding), else the new ones + the cache
        if mask is not None:
            lengths = mask.sum(1).tolist()
        else:
            cache = kwargs.get("past_key_values") or kwargs.get("cache")
            past = cache.get_seq_length() if cache is not None else 0
            lengths = [past + q] * rows
        self._cur = ("prefill" if q > 1 else "step", lengths, q)
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, module, args, out) -> None:
        self._sync()
        kind, lengths, q = self._cur
        # prefill: the new positions of each row (real ones only: the mask's count for left padding)
        self.calls.append((kind, time.perf_counter() - self._t0, lengths if kind == "step" else
                           [min(n, q) for n in lengths]))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _layer_kinds(cfg, layers: int) -> list[str]:
    """"global" or "local" (attends through a window) for each layer."""
    neo = getattr(cfg, "attention_layers", None)  # GPT-Neo
    if neo:
        return list(neo)
    types = getattr(cfg, "layer_types", None)  # Qwen2, Gemma 2/3, ...: "sliding_attention" / "full_attention"
    if types:
        return ["local" if "sliding" in t else "global" for t in types]
    return ["local" if getattr(cfg, "sliding_window", None) else "global"] * layers  # Mistral: every layer


def model_shape(cfg) -> dict:
    """What the FLOP and byte counts need from a decoder-only config (weight matrices as sumtune.flops
    counts them)."""
    counted = flops.model_shape(cfg)
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    kinds = _layer_kinds(cfg, layers)
    window = getattr(cfg, "window_size", None) or getattr(cfg, "sliding_window", None) or 1 << 30
    return {"matmul": counted.matmul, "head": counted.head, "query_width": heads * head_dim,
            "kv_width": kv_heads * head_dim, "global": kinds.count("global"), "local": kinds.count("local"),
            "window": window}


def prefill_flops(shape: dict, length: int) -> float:
    """Model FLOPs of one prompt's prefill: weights per token (the head once), causal attention
    (scores and the weighted sum: 4 x query heads x head_dim per key and layer)."""
    w = shape["window"]
    global_keys = length * (length + 1) / 2
    local_keys = global_keys if length <= w else w * (w + 1) / 2 + (length - w) * w
    attention = 4 * shape["query_width"] * (shape["global"] * global_keys + shape["local"] * local_keys)
    return 2 * (shape["matmul"] - shape["head"]) * length + 2 * shape["head"] + attention


def step_bytes(shape: dict, lengths: list[int], elem: int) -> float:
    """Bytes one incremental step must read: every weight matrix once, each row's keys and values
    (key/value heads only: grouped-query heads share them)."""
    w = shape["window"]
    positions = sum(shape["global"] * n + shape["local"] * min(n, w) for n in lengths)
    return shape["matmul"] * elem + positions * 2 * shape["kv_width"] * elem


def phase_figures(calls, shape: dict, elem: int, total_s: float) -> dict:
    pre = [c for c in calls if c[0] == "prefill"]
    steps = [c for c in calls if c[0] == "step"]
    pre_s, step_s = sum(c[1] for c in pre), sum(c[1] for c in steps)
    work = sum(prefill_flops(shape, n) for c in pre for n in c[2])
    nbytes = sum(step_bytes(shape, c[2], elem) for c in steps)
    return {"prefill_s": pre_s, "prefill_flops": work, "steps": len(steps), "step_s": step_s,
            "step_bytes": nbytes, "search_s": total_s - pre_s - step_s}


def copy_bandwidth(device: torch.device, mb: int, reps: int = 7) -> float:
    """A STREAM-like copy: bytes read + written per second copying an `mb` MB buffer (median of `reps`)."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)
