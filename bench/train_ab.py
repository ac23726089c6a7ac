#!/usr/bin/env python3
"""One training fast path on and off: optimizer steps of sumtune's trainer with every fast path,
against the same without `--without NAME...` (one path or several), alternating in one process on one model and the same
8 rows (bench/throughput.py compares with the peer instead).

    python bench/train_ab.py --data TOKENS.jsonl --without blocked_local_attention
        [--method lora|prompt_tuning|last_layers] [--model gpt-neo-125m-random|...] [--reps 4]
        [--precision auto] [--threads N] [--json]

The setting of bench/throughput.py (batch 2 x accumulation 4, LoRA r 8 / dropout 0.05, 12 virtual
tokens, lr 5e-4). The fast paths are applied afresh before each step (`apply_fast_paths` reverts
first; not timed); one untimed step of each side first, then `--reps` pairs, the order flipped
every pair. Printed: each step, the median seconds of each side and with/without (below 1: the path
makes the step faster), and the first timed pair's losses (the weights move between steps, so the
two sides' losses agree to the step's update, not bit for bit; the tests check exactness).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RANDOM_125M, load_rows, peer_method_flags, precision_for, write_model_dir

from sumtune.config import FAST_PATH_NAMES


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--without", required=True, nargs="+", choices=FAST_PATH_NAMES, metavar="NAME")
    ap.add_argument("--method", default="lora", choices=["lora", "prompt_tuning", "last_layers"])
    ap.add_argument("--model", default=RANDOM_125M)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from datasets import Dataset

    from sumtune.config import build_config
    from sumtune.data import Collator, epoch_order, micro_batches
    from sumtune.fastpath import FastPathContext, apply_fast_paths, select_loss
    from sumtune.modeling import autocast_dtype, load_model, load_tokenizer
    from sumtune.training import accelerator_for, make_optimizer, optimizer_step
    from sumtune.training.step import token_loss_sum

    work = Path(tempfile.mkdtemp(prefix="sumtune-train-ab-"))
    model_dir = str(write_model_dir(a.model, work / "model"))
    rows = load_rows(a.data)[:8]
    cfg = build_config(flags={
        "model.name": model_dir, "method.name": a.method, "output_dir": str(work / "run"),
        **peer_method_flags(),
        "train.batch_size": 2, "train.grad_accum": 4, "train.lr": 5e-4, "train.weight_decay": 0.0,
        "train.warmup_ratio": 0.0, "train.precision": precision_for(a.precision), "train.seed": 0,
    })
    accelerator, precision = accelerator_for(cfg, work / "run")
    tokenizer = load_tokenizer(model_dir)
    from sumtune.methods import get_method

    method = get_method(a.method)
    model = method.prepare(load_model(model_dir), tokenizer, method.options(cfg.method))
    ctx = FastPathContext(autocast=autocast_dtype(precision))
    enabled = {"with": set(FAST_PATH_NAMES), "without": set(FAST_PATH_NAMES) - set(a.without)}
    applied = {side: apply_fast_paths(model, ctx, names) for side, names in enabled.items()}  # (names only)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    collate = Collator(tokenizer.pad_token_id)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(model, method, cfg.train, applied["with"], 1000)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    times: dict[str, list[float]] = {"with": [], "without": []}
    losses: dict[str, float] = {}
    for rep in range(-1, a.reps):  # rep -1: warm-up, not timed
        for side in (("with", "without") if rep % 2 == 0 else ("without", "with")):
            names = apply_fast_paths(model, ctx, enabled[side])
            loss_fn = select_loss(model, token_loss_sum, names)
            batches = micro_batches(ds, epoch_order(len(ds), 0, 0), 2, 1, 0, collate)
            t0 = time.perf_counter()
            loss = optimizer_step(accelerator, model, optimizer, scheduler, loss_fn, batches, trained, 1.0).loss
            if rep >= 0:
                times[side].append(time.perf_counter() - t0)
                losses.setdefault(side, loss)
                print(f"rep {rep} {side:7s} {times[side][-1]:.3f} s loss {loss:.5f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"without": " ".join(a.without), "method": a.method, "precision": precision, "threads": torch.get_num_threads(),
              "reps": a.reps, "with_s": round(med["with"], 3), "without_s": round(med["without"], 3),
              "ratio": round(med["with"] / med["without"], 3), "first_losses": losses,
              "applied_with": applied["with"]}
    print(f"{a.method} {precision}, {result['threads']} threads: with {' '.join(a.without)} {med['with']:.3f} s | without "
          f"{med['without']:.3f} s | with/without {result['ratio']:.3f}")
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
