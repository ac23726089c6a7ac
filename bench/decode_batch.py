#!/usr/bin/env python3
"""sumtune's decoding cost per `eval.batch_size`: the CPU time and peak RSS of the same summaries
decoded at each batch size (rows, beams included), to choose the default; and whether the outputs are those of the smallest size.

    python bench/decode_batch.py --data TOKENS.jsonl [--model gpt-neo-125m-random|DIR]
        [--decoding cnndm] [--sizes 8 16 32] [--n 8] [--max-new-tokens 64] [--json]

One process, the sizes in increasing order: the peak RSS printed after each size is the process's
peak so far (ru_maxrss never falls), so it is that size's peak when it is the largest yet. CPU time
(not wall time) is what a shared machine disturbs least. The model as `bench/generate.py` builds it
(fast paths for inference, fp32), the prompts and lengths as there.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from common import build_model
from generate import decoding_config, load_prompts

from sumtune.decoding import Generator
from sumtune.fastpath import speed_up


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="gpt-neo-125m-random")
    ap.add_argument("--decoding", default="cnndm", choices=["greedy", "cnndm"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    model, tokenizer = build_model(a.model)
    model.eval()
    speed_up(model, inference=True)
    prompts = load_prompts(a.data, a.n)
    rows, first = [], None
    for size in sorted(a.sizes):
        ev = decoding_config(argparse.Namespace(batch_size=size, decoding=a.decoding, min_new_tokens=None,
                                                max_new_tokens=a.max_new_tokens))
        c0 = time.process_time()
        outputs = Generator(model, tokenizer, ev, stop_at_blank_line=False).generate(prompts)
        first = first or outputs
        row = {"batch_size": size, "cpu_seconds": round(time.process_time() - c0, 2),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
               "same_as_smallest": sum(x == y for x, y in zip(outputs, first))}
        rows.append(row)
        print(f"eval.batch_size {size:3d}: {row['cpu_seconds']:8.2f} CPU s, peak RSS so far {row['peak_rss_mb']} MB, "
              f"{row['same_as_smallest']}/{len(prompts)} outputs as at the smallest size",
              flush=True)
    if a.json:
        print(json.dumps({"model": a.model, "decoding": a.decoding, "n": a.n, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
