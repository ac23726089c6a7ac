#!/usr/bin/env python3
"""One decoding fast path on and off: sumtune's `Generator` (greedy) with every fast path that
applies at inference, against the same without `--without NAME`, alternating in one process on
the same model and prompts (bench/generate.py compares with HF `generate` instead).

    python bench/fastpath_ab.py --data TOKENS.jsonl --without few_rows_head [--model ...]
        [--n 8] [--max-new-tokens 64] [--batch-size 8] [--reps 4] [--precision auto|bf16|fp32]
        [--threads N] [--json]

The fast paths are applied afresh before each run (`apply_fast_paths` reverts first; not timed).
One untimed run of each side first warms the kernels (and makes any one-time choice a path
measures); then `--reps` pairs, the order flipped every pair. Printed: median seconds of each
side, with/without (below 1: the path makes decoding faster), and whether outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import build_model, precision_for
from generate import load_prompts

from sumtune.config import FAST_PATH_NAMES, EvalConfig
from sumtune.decoding import Generator
from sumtune.fastpath import FastPathContext, apply_fast_paths


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--without", required=True, choices=FAST_PATH_NAMES)
    ap.add_argument("--model", default="gpt-neo-125m-random")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = precision_for(a.precision)
    dtype = torch.bfloat16 if precision == "bf16" else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts = load_prompts(a.data, a.n)
    model, tokenizer = build_model(a.model)
    model.eval().to(device)
    ctx = FastPathContext(training=False, autocast=dtype)
    cfg = EvalConfig(batch_size=a.batch_size, num_beams=1, max_new_tokens=a.max_new_tokens)
    enabled = {"with": set(FAST_PATH_NAMES), "without": set(FAST_PATH_NAMES) - {a.without}}
    times: dict[str, list[float]] = {"with": [], "without": []}
    outputs: dict[str, list[list[int]]] = {}
    applied: dict[str, list[str]] = {}
    for rep in range(-1, a.reps):  # rep -1: warm-up, not timed
        for side in (("with", "without") if rep % 2 == 0 else ("without", "with")):
            applied[side] = apply_fast_paths(model, ctx, enabled[side])
            t0 = time.perf_counter()
            outputs[side] = Generator(model, tokenizer, cfg, autocast=dtype, stop_at_blank_line=False).generate(prompts)
            if rep >= 0:
                times[side].append(time.perf_counter() - t0)
                print(f"rep {rep} {side:7s} {times[side][-1]:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"without": a.without, "precision": precision, "threads": torch.get_num_threads(), "n": len(prompts),
              "max_new_tokens": a.max_new_tokens, "reps": a.reps, "with_s": round(med["with"], 3),
              "without_s": round(med["without"], 3), "ratio": round(med["with"] / med["without"], 3),
              "identical_output": outputs["with"] == outputs["without"], "applied_with": applied["with"]}
    print(f"{precision}, {result['threads']} threads: with {a.without} {med['with']:.3f} s | without "
          f"{med['without']:.3f} s | with/without {result['ratio']:.3f} | identical output: {result['identical_output']}")
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
