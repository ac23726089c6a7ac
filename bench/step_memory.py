#!/usr/bin/env python3
"""Where the memory of one training step goes: weights, the tensors saved for backward (by the
module that saved them), the loss head's logits, optimizer state, and what the allocator holds.

    python bench/step_memory.py --data TOKENS.jsonl --model DIR [--method lora] [--batch-size 4]
        [--grad-accum 1] [--precision auto] [--fast true] [--without NAME...] [--set key=value ...] [--json]

One optimizer step over the first batch x accumulation rows of the file, built with the trainer's
own pieces (as bench/throughput_worker.py: the method, the fast paths, the loss, AdamW, the step),
in this process (`--steps N`: N steps on the same rows, each step's own peak). Printed, in MB:
- the process before the model (Python, torch, Transformers), RSS;
- the weights: the parameters' storages by dtype, and frozen copies kept beside them (the fp32
  originals `cast_frozen_weights` keeps for revert under bf16);
- trainable parameters, their gradients and AdamW's two moments;
- saved for backward: every tensor autograd saves during the largest forward of the step
  (`torch.autograd.graph.saved_tensors_hooks`, each storage counted once), grouped by the kind
  of module that was running (attention, MLP, norm, LoRA, the loss head, ...);
- RSS before the step, the step's peak RSS (VmHWM reset at the step's start: the kernel's exact
  high-water mark), and the rest: peak - before - saved = backward temporaries, gradients of
  activations and what the allocator keeps (after the step, `malloc_trim(0)` shows how much of
  the process's RSS glibc held as free memory).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import load_rows, peer_method_flags, precision_for, train_step_parts

from sumtune.config import FAST_PATH_NAMES
from sumtune.memory import PeakMemory, current_rss_mb

MB = 2**20


def _kind(module: torch.nn.Module | None) -> str:
    """The family a module belongs to, for the saved-tensor table."""
    if module is None:
        return "loss head (outside modules)"
    name = type(module).__name__.lower()
    for word, kind in (("lora", "LoRA"), ("attention", "attention"), ("attn", "attention"), ("mlp", "MLP"),
                       ("norm", "norm"), ("embedding", "embedding"), ("rotary", "rotary")):
        if word in name:
            return kind
    if isinstance(module, torch.nn.Linear):
        return "linear"
    return type(module).__name__


class SavedTensors:
    """Within `track()`, the bytes of each storage autograd saves, by the kind of the innermost
    module running when it was saved (a storage saved twice counts once, where first saved)."""

    def __init__(self, weights: set[int]) -> None:
        self.weights = weights  # storages counted as weights (parameters, kept low-precision copies)
        self.by_kind: dict[str, int] = defaultdict(int)
        self.seen: set[int] = set()
        self.stack: list[torch.nn.Module] = []

    def _pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        key = s.data_ptr()
        if key not in self.seen and key not in self.weights:
            self.seen.add(key)
            self.by_kind[_kind(self.stack[-1] if self.stack else None)] += s.nbytes()
        return t

    def track(self):
        def enter(m, args) -> None:
            self.stack.append(m)

        def leave(m, args, out) -> None:
            self.stack.pop()

        pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
        post = torch.nn.modules.module.register_module_forward_hook(leave)
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        return pre, post, hooks

    def total(self) -> int:
        return sum(self.by_kind.values())


def _build(a: argparse.Namespace, precision: str):
    from sumtune.config import build_config
    from sumtune.data import epoch_order, micro_batches
    from sumtune.training import optimizer_step

    work = Path(tempfile.mkdtemp(prefix="sumtune-memory-"))
    n = a.batch_size * a.grad_accum
    rows = load_rows(a.data)[:n]
    flags = {
        "model.name": a.model, "method.name": a.method, "output_dir": str(work / "run"), **peer_method_flags(),
        "train.batch_size": a.batch_size, "train.grad_accum": a.grad_accum, "train.lr": 5e-4,
        "train.weight_decay": 0.0, "train.warmup_ratio": 0.0, "train.precision": precision,
        "train.fast": a.fast == "true", "train.seed": 0,
        "train.fast_paths": [x for x in FAST_PATH_NAMES if x not in a.without],
    }
    flags.update(dict(kv.split("=", 1) for kv in a.set))
    cfg = build_config(flags=flags)
    t = train_step_parts(cfg, rows, work)
    if a.trim:  # glibc gives its free pages back after every backward (a row's, where rows run alone)
        backward = t.accelerator.backward
        t.accelerator.backward = lambda loss: (backward(loss), _malloc_trim())

    def step(loss) -> float:
        batches = micro_batches(t.ds, epoch_order(len(t.ds), 0, 0), a.batch_size, 1, 0, t.collate)
        return optimizer_step(t.accelerator, t.model, t.optimizer, t.scheduler, loss, batches, t.trained, 1.0).loss

    return t.model, t.optimizer, t.loss_fn, step, t.applied, rows


def _weights(model: torch.nn.Module) -> dict[str, float]:
    """MB of parameter storages by dtype, of frozen originals kept by fast paths, and of trainable parameters."""
    from sumtune.fastpath import FAST_PATHS

    seen: set[int] = set()
    out: dict[str, float] = defaultdict(float)
    for p in model.parameters():
        if p.untyped_storage().data_ptr() not in seen:
            seen.add(p.untyped_storage().data_ptr())
            out[f"weights {str(p.dtype).removeprefix('torch.')}"] += p.untyped_storage().nbytes() / MB
    for path in FAST_PATHS:  # Parameters a fast path replaced and keeps for revert (its undo closures)
        for undo in path._undo.get(model, []):
            for cell in undo.__closure__ or ():
                v = cell.cell_contents
                if isinstance(v, torch.nn.Parameter) and v.untyped_storage().data_ptr() not in seen:
                    seen.add(v.untyped_storage().data_ptr())
                    out["frozen originals kept for revert"] += v.untyped_storage().nbytes() / MB
    out["trainable parameters"] = sum(p.numel() * p.element_size() for p in model.parameters()
                                      if p.requires_grad) / MB
    return dict(out)


def _optimizer_mb(optimizer) -> float:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t)) / MB


def _malloc_trim() -> float:
    """RSS freed by glibc's malloc_trim(0) (MB; 0 where glibc is not there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return 0.0
    before = current_rss_mb()
    libc.malloc_trim(0)
    return before - current_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--model", required=True, help="a model directory")
    ap.add_argument("--method", default="lora", choices=["lora", "prompt_tuning", "last_layers", "full"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--fast", default="true", choices=["true", "false"])
    ap.add_argument("--without", nargs="*", default=[], choices=FAST_PATH_NAMES, metavar="NAME")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config flags")
    ap.add_argument("--steps", type=int, default=1, help="steps measured (each its own peak; the first's breakdown)")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) after every backward (an experiment)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = precision_for(a.precision)
    import transformers  # noqa: F401  (counted in the process before the model)

    base_rss = current_rss_mb()
    model, optimizer, loss_fn, step, applied, rows = _build(a, precision)
    from sumtune.fastpath.loss import _LOW_WEIGHTS

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = SavedTensors(weights)
    largest: list[dict[str, int]] = []

    def tracked(m, batch):
        saved.weights |= {c[1].untyped_storage().data_ptr() for c in _LOW_WEIGHTS.values()}
        saved.by_kind.clear(), saved.seen.clear()
        pre, post, hooks = saved.track()
        try:
            with hooks:
                out = loss_fn(m, batch)
        finally:
            pre.remove(), post.remove()
        if not largest or saved.total() > sum(largest[0].values()):
            largest[:] = [dict(saved.by_kind)]
        return out

    tracked.__dict__.update(loss_fn.__dict__)
    rss_before = current_rss_mb()
    peaks, seconds = [], []
    for k in range(a.steps):
        peak = PeakMemory(torch.device("cpu")).start()
        t0 = time.perf_counter()
        step(tracked if k == 0 else loss_fn)
        seconds.append(round(time.perf_counter() - t0, 1))
        peaks.append(round(peak.peak_mb(), 1))
    peak_mb = peaks[0]
    rss_after = current_rss_mb()
    trimmed = _malloc_trim()
    kinds = largest[0] if largest else {}
    saved_mb = sum(kinds.values()) / MB
    result = {
        "model": a.model, "method": a.method, "precision": precision, "batch_size": a.batch_size,
        "grad_accum": a.grad_accum, "rows_tokens": [len(r["input_ids"]) for r in rows], "fast_paths": applied,
        "process_before_model_mb": round(base_rss, 1), **{k: round(v, 1) for k, v in _weights(model).items()},
        "gradients_mb": round(sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / MB, 1),
        "optimizer_state_mb": round(_optimizer_mb(optimizer), 1),
        "saved_for_backward_mb": round(saved_mb, 1),
        "saved_by_kind_mb": {k: round(v / MB, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "rss_before_step_mb": round(rss_before, 1), "step_peak_rss_mb": round(peak_mb, 1),
        "step_rest_mb": round(peak_mb - rss_before - saved_mb, 1),
        "rss_after_step_mb": round(rss_after, 1), "malloc_trim_frees_mb": round(trimmed, 1),
        "step_peaks_rss_mb": peaks, "step_seconds": seconds,
    }
    print(f"one {a.method} step, {precision}, batch {a.batch_size} x accumulation {a.grad_accum}, rows of "
          f"{result['rows_tokens']} tokens ({a.model}); fast paths: {', '.join(applied) or 'none'}")
    for k, v in result.items():
        if isinstance(v, (float, dict)) and (k.endswith("_mb") or k.startswith("weights")) or k in ("trainable parameters", "frozen originals kept for revert"):
            if isinstance(v, dict):
                for kk, vv in v.items():
                    print(f"    saved by {kk:32s} {vv:9.1f} MB")
            else:
                print(f"  {k:40s} {v:9.1f} MB")
    print(f"  each step's peak RSS: {peaks} MB; seconds: {seconds}")
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
