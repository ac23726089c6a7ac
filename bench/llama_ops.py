#!/usr/bin/env python3
"""The Llama layout's training fast paths one op at a time: Transformers' reference against
sumtune's fused op, forward + backward at one layer's shapes, alternating in one process.

    python bench/llama_ops.py [--tokens 560] [--hidden 576] [--heads 9] [--kv-heads 3]
        [--intermediate 1536] [--reps 15] [--threads N] [--json]

Defaults: SmolLM2-135M's layer at one training row of 560 tokens (bench/throughput.py's mean row;
sumtune runs each row alone on a CPU). Ops: RMSNorm, the rotary embedding of q and k, SwiGLU
(silu(gate) * up), and the attention of a padded row (a boolean mask: Transformers expands the
key/value heads there, `gqa_attention` does not). Printed per op: the minimum and median ms of
each side over `--reps` (the minimum is the figure least disturbed by other work on the machine),
fused/reference, and, times the layer count (30), the seconds a row's step spends in that op.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb, repeat_kv

from sumtune.fastpath.rmsnorm import RMSNormFunction
from sumtune.fastpath.rotary import rotate_qk
from sumtune.fastpath.swiglu import SwiGLUFunction


def _ops(a: argparse.Namespace) -> dict[str, tuple]:
    """{op: (reference fn, fused fn, per-layer count)}; each fn runs forward + backward once."""
    t, d, hd = a.tokens, a.hidden, a.hidden // a.heads
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, t, d, generator=g, requires_grad=True)
    norm = LlamaRMSNorm(d, eps=1e-5)
    q = torch.randn(1, t, a.heads, hd, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(1, t, a.kv_heads, hd, generator=g).transpose(1, 2).requires_grad_()
    v = torch.randn(1, a.kv_heads, t, hd, generator=g, requires_grad=True)
    angles = torch.arange(t)[:, None] * 10000 ** (-torch.arange(0, hd, 2) / hd)
    cos, sin = (torch.cat([f(angles)] * 2, -1)[None] for f in (torch.cos, torch.sin))
    gate = torch.randn(1, t, a.intermediate, generator=g, requires_grad=True)
    up = torch.randn(1, t, a.intermediate, generator=g, requires_grad=True)
    mask = torch.ones(1, 1, t, t, dtype=torch.bool).tril()
    rep = a.heads // a.kv_heads

    def backward(*outs):
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return {
        "rmsnorm": (lambda: backward(norm(x)), lambda: backward(RMSNormFunction.apply(x, norm.weight, 1e-5)), 2),
        "rotary": (lambda: backward(*apply_rotary_pos_emb(q, k, cos, sin)), lambda: backward(*rotate_qk(q, k, cos, sin)), 1),
        "swiglu": (lambda: backward(F.silu(gate) * up), lambda: backward(SwiGLUFunction.apply(gate, up)), 1),
        "attention_masked": (
            lambda: backward(F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), attn_mask=mask)),
            lambda: backward(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=560)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = {}
    for name, (ref, fused, per_layer) in _ops(a).items():
        times: dict[str, list[float]] = {"reference": [], "fused": []}
        for rep in range(a.reps + 1):
            for side, fn in (("reference", ref), ("fused", fused)) if rep % 2 else (("fused", fused), ("reference", ref)):
                t0 = time.perf_counter()
                fn()
                if rep:  # the first pair warms up
                    times[side].append(1e3 * (time.perf_counter() - t0))
        lo = {s: min(v) for s, v in times.items()}
        med = {s: statistics.median(v) for s, v in times.items()}
        result[name] = {"reference_ms": round(lo["reference"], 2), "fused_ms": round(lo["fused"], 2),
                        "reference_median_ms": round(med["reference"], 2), "fused_median_ms": round(med["fused"], 2),
                        "ratio": round(lo["fused"] / lo["reference"], 3),
                        "row_step_s_reference": round(lo["reference"] * per_layer * a.layers / 1e3, 3),
                        "row_step_s_fused": round(lo["fused"] * per_layer * a.layers / 1e3, 3)}
        r = result[name]
        print(f"{name:17s} reference {r['reference_ms']:7.2f} ms (median {r['reference_median_ms']:7.2f})  fused "
              f"{r['fused_ms']:7.2f} ms (median {r['fused_median_ms']:7.2f})  fused/reference {r['ratio']:.3f}  "
              f"a row's step: {r['row_step_s_reference']:.3f} -> {r['row_step_s_fused']:.3f} s", flush=True)
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
