#!/usr/bin/env python3
"""Causal attention forward + backward at a training shape: PyTorch's SDPA as the trainer calls it
(on a CPU its flash kernel) against SDPA's math backend and against attention written as two
batched matmuls with an fp32 softmax, the other ways a fast path could compute it.

    python bench/attention_kernels.py [--batch 2] [--heads 12] [--tokens 600] [--head-dim 64]
        [--dtype bf16|fp32] [--threads 1] [--reps 8] [--json]

The question it answers: is attention, a fifth to a third of a LoRA or prompt-tuning step at the
GPT-Neo-125M shape (`bench/profile_step.py`), slow because of the kernel the trainer picks, or is
that kernel already the fastest of these? Each rep runs every variant once (on fresh inputs), the
order rotating; printed: median milliseconds of each and its ratio to SDPA, and each variant's largest
difference from fp32 SDPA (the variants round differently in bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_math(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def two_matmuls(q, k, v):
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1).to(q.dtype) @ v


VARIANTS = {"sdpa": sdpa, "sdpa_math": sdpa_math, "two_matmuls": two_matmuls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--tokens", type=int, default=600)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    shape, dtype = (a.batch, a.heads, a.tokens, a.head_dim), DTYPES[a.dtype]
    grad = torch.randn(shape, dtype=dtype)
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    names = list(VARIANTS)
    for rep in range(a.reps + 1):  # the first round warms up, untimed
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
            t0 = time.perf_counter()
            VARIANTS[n](q, k, v).backward(grad)
            if rep:
                times[n].append(time.perf_counter() - t0)
    q, k, v = (torch.randn(shape, dtype=dtype) for _ in range(3))
    ref = sdpa(q.float(), k.float(), v.float())
    med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    err = {n: (f(q, k, v).float() - ref).abs().max().item() for n, f in VARIANTS.items()}
    print(f"causal attention fwd+bwd {list(shape)} {a.dtype}, {a.threads} thread(s), median of {a.reps}")
    for n in VARIANTS:
        print(f"  {n:12s} {med[n]:9.1f} ms  {med[n] / med['sdpa']:.2f}x sdpa  max |diff| vs fp32 sdpa {err[n]:.1e}")
    if a.json:
        print(json.dumps({"shape": list(shape), "dtype": a.dtype, "threads": a.threads, "reps": a.reps,
                          "ms": {n: round(v, 2) for n, v in med.items()}, "max_abs_diff": err}))


if __name__ == "__main__":
    main()
