#!/usr/bin/env python3
"""The LM head for a few rows (one decoding step): `F.linear(x, W)` against `(W @ x.T).T`
(the `few_rows_head` shortcut, fastpath/head.py), per thread count, dtype and row count, on a
GPT-Neo-125M-shaped head weight [50257, 768] (random; speed does not depend on the values).

    python bench/head_rows.py [--threads 1 2] [--rows 1 4 8 16] [--dtypes fp32 bf16]
        [--reps 15] [--rounds 3] [--sliced] [--json]

x is a [rows, 768] matrix; with `--sliced`, F.linear gets instead the last position of a
[rows, 64, 768] tensor, a 3-D view, as Transformers' `logits_to_keep=1` hands it to the head at
prefill (the shortcut gets that view as a matrix, as `FewRowsLinear` does).

Each setting runs both sides alternately (A B B A ...) after a warm-up, `--reps` pairs per round;
the rounds go over all settings again, so a busy spell on a shared machine hits both sides.
Printed: median milliseconds of each side, shortcut/linear (below 1: the shortcut is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shortcut(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w @ x.t()).t()


def pair_times(x: torch.Tensor, w: torch.Tensor, reps: int) -> tuple[list[float], list[float]]:
    """Seconds per call of F.linear and of the shortcut, `reps` each, alternating (ABBA...)."""
    sides = {"linear": lambda: F.linear(x, w), "shortcut": lambda: shortcut(x.reshape(-1, x.shape[-1]), w)}
    times: dict[str, list[float]] = {"linear": [], "shortcut": []}
    for i in range(reps):
        for name in (("linear", "shortcut") if i % 2 == 0 else ("shortcut", "linear")):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
    return times["linear"], times["shortcut"]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--reps", type=int, default=15, help="timed pairs per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sliced", action="store_true", help="F.linear on a 3-D last-position view (see above)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    weights = {d: torch.randn(50257, 768).to(DTYPES[d]) for d in a.dtypes}
    settings = [(t, d, r) for t in a.threads for d in a.dtypes for r in a.rows]
    acc: dict[tuple, tuple[list[float], list[float]]] = {s: ([], []) for s in settings}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for t, d, r in settings:
                torch.set_num_threads(t)
                x = torch.randn(r, 64 if a.sliced else 1, 768).to(DTYPES[d])[:, -1]
                x = x[:, None] if a.sliced else x
                pair_times(x, weights[d], 3)  # warm-up
                lin, sc = pair_times(x, weights[d], a.reps)
                acc[(t, d, r)][0].extend(lin)
                acc[(t, d, r)][1].extend(sc)
    out = []
    print("threads dtype rows  linear_ms shortcut_ms  shortcut/linear")
    for (t, d, r), (lin, sc) in acc.items():
        ml, ms = statistics.median(lin) * 1e3, statistics.median(sc) * 1e3
        out.append({"threads": t, "dtype": d, "rows": r, "linear_ms": round(ml, 2), "shortcut_ms": round(ms, 2),
                    "ratio": round(ms / ml, 3), "n": len(lin)})
        print(f"{t:7d} {d:5s} {r:4d} {ml:10.2f} {ms:11.2f} {ms / ml:16.3f}")
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
