#!/usr/bin/env python3
"""Where the time goes: one sumtune training step (or a decoding run) under torch.profiler.

    python bench/profile_step.py --data TOKENS.jsonl --method {lora,prompt_tuning,last_layers}
        [--epochs 3] [--precision auto] [--fast true] [--without NAME...] [--threads N] [--rows 20] [--shapes]
    python bench/profile_step.py --data TOKENS.jsonl --generate [--decoding greedy|cnndm] [--n 8]
        [--max-new-tokens 64] [--batch-size 8]

Training: the setting of bench/throughput.py (GPT-Neo-125M shape, random weights, the first
8 rows of the file, batch 2 x accumulation 4, LoRA r 8 / dropout 0.05, 12 virtual tokens),
one optimizer step per epoch, built with the trainer's own pieces; the time of every epoch
is printed (for last_layers, epochs after the first run from the feature cache), then the
top operators of one more step, then that step's time per op family (op_families.py: GEMMs,
attention, casts, dropout, GELU, norms, loss, optimizer, elementwise, other; forward, backward
and optimizer apart), the GEMMs' achieved FLOP/s, and the MFU bound: the step's model FLOPs
(bench/mfu.py) over the GEMM time alone, i.e. the MFU if everything but the GEMMs took no time.
That step is profiled without recording shapes; the GEMMs' FLOPs (and `--shapes`) come from
profiling the same epoch once more with them.
Decoding: sumtune's Generator prepared as `sumtune evaluate` prepares a run, greedy or the cnndm
preset (beam 4; min new tokens capped at `--max-new-tokens`), batch 8 rows (beams included, as
`eval.batch_size`). `--shapes` also lists the costliest `aten::copy_` calls by shape (casts). A
profile is a guide (the profiler adds its own overhead); speed claims come from the side-by-side scripts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import (
    RANDOM_125M,
    build_model,
    load_rows,
    peer_method_flags,
    precision_for,
    train_step_parts,
    write_model_dir,  # noqa: E402
)
from mfu import bf16_peak, flops_per_token
from op_families import family_table
from torch.profiler import ProfilerActivity, profile

from sumtune.config import FAST_PATH_NAMES


def _train_step(a, precision: str):
    """(a function running one optimizer step for epoch e, the step's model FLOPs (bench/mfu.py))."""
    from sumtune.config import build_config
    from sumtune.data import epoch_order, micro_batches
    from sumtune.training import optimizer_step

    work = Path(tempfile.mkdtemp(prefix="sumtune-profile-"))
    model_dir = str(write_model_dir(a.model, work / "model"))
    rows = load_rows(a.data)[:8]
    cfg = build_config(flags={
        "model.name": model_dir, "method.name": a.method, "output_dir": str(work / "run"),
        **peer_method_flags(), "train.batch_size": 2, "train.grad_accum": 4, "train.lr": 5e-4, "train.weight_decay": 0.0,
        "train.warmup_ratio": 0.0, "train.precision": precision, "train.fast": a.fast == "true", "train.seed": 0,
        "train.fast_paths": [n for n in FAST_PATH_NAMES if n not in a.without],
    })
    t = train_step_parts(cfg, rows, work)

    def step(epoch: int) -> None:
        batches = micro_batches(t.ds, epoch_order(len(t.ds), 0, epoch), 2, 1, 0, t.collate)
        optimizer_step(t.accelerator, t.model, t.optimizer, t.scheduler, t.loss_fn, batches, t.trained, 1.0)

    tokens = sum(len(r["input_ids"]) for r in rows)
    from sumtune.fastpath.loss import find_lm

    return step, tokens * flops_per_token(find_lm(t.model).config, a.method, sum(p.numel() for p in t.trained))


def _generate(a, precision: str):
    from sumtune.config import EvalConfig, apply_preset
    from sumtune.decoding import Generator
    from sumtune.fastpath import speed_up

    rows = load_rows(a.data)[: a.n]
    prompts = [[t for t, y in zip(r["input_ids"], r["labels"]) if y == -100] for r in rows]
    model, tokenizer = build_model(a.model)
    model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else None
    speed_up(model, autocast=dtype, inference=True)
    ev = apply_preset(EvalConfig(batch_size=a.batch_size), a.decoding)
    ev.max_new_tokens, ev.min_new_tokens = a.max_new_tokens, min(ev.min_new_tokens, a.max_new_tokens)
    gen = Generator(model, tokenizer, ev, autocast=dtype, stop_at_blank_line=False)
    return (lambda _epoch: gen.generate(prompts)), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--model", default=RANDOM_125M)
    ap.add_argument("--method", default="lora", choices=["lora", "prompt_tuning", "last_layers", "full"])
    ap.add_argument("--generate", action="store_true", help="profile decoding instead of a training step")
    ap.add_argument("--n", type=int, default=8, help="prompts (--generate)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--decoding", default="greedy", choices=["greedy", "cnndm"], help="preset (--generate)")
    ap.add_argument("--batch-size", type=int, default=8, help="decoding rows, beams included (--generate)")
    ap.add_argument("--epochs", type=int, default=2, help="timed runs before the profiled one")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--fast", default="true", choices=["true", "false"])
    ap.add_argument("--without", nargs="*", default=[], choices=FAST_PATH_NAMES, metavar="NAME",
                    help="training: every fast path but these")
    ap.add_argument("--rows", type=int, default=20, help="operators to list")
    ap.add_argument("--shapes", action="store_true", help="also the costliest aten::copy_ calls by shape")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = precision_for(a.precision)
    run, model_flops = _generate(a, precision) if a.generate else _train_step(a, precision)
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        run(epoch)
        print(f"run {epoch}: {time.perf_counter() - t0:.3f} s", flush=True)
    # times from a profile that records no shapes (with shapes, elementwise ops measured 3-4x slower:
    # SiLU 1.8 -> 5.8 ms a call on SmolLM2-135M); the GEMMs' FLOPs and the copies' shapes from a second
    # profile of the same epoch (the same rows, so the same GEMMs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run(a.epochs)
        wall = time.perf_counter() - t0
        print(f"profiled run: {wall:.3f} s ({precision})")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as counted:
        run(a.epochs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
    dtype = "bf16" if precision == "bf16" else "fp32"  # the peak of the precision the step ran in
    print(family_table(prof.events(), wall, bf16_peak(2.0)[f"{dtype}_flops"], model_flops, dtype, counted.events()))
    if a.shapes:
        copies = [e for e in counted.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
        for e in sorted(copies, key=lambda e: -e.self_cpu_time_total)[:10]:
            print(f"aten::copy_ {e.self_cpu_time_total / 1e3:8.1f} ms {e.count:6d} calls {e.input_shapes}")


if __name__ == "__main__":
    main()
