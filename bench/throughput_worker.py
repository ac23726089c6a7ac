#!/usr/bin/env python3
"""One sumtune side of bench/throughput.py (run in its own process for a clean peak RSS).

Trains on pre-tokenised rows with the trainer's own pieces, set up as `train.train`
sets them up: the method's `prepare`, `fastpath.apply_fast_paths` and `select_loss` (switched
by train.fast and train.fast_paths), the AdamW parameter groups and schedule, the data order, collation and
`train.optimizer_step` (exact accumulation, clipping). What `train.train` adds around
them - reading text data, validation, checkpoints - is left out, as the peer has none.
Prints one JSON line: seconds and tokens/s of the first epoch, all epochs' time, and the peak RSS
before training (model loading and set-up: bench/throughput.py prints it beside the whole run's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import peer_method_flags


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--fast", default="true", choices=["true", "false"])
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def bench_config(a: argparse.Namespace):
    """The run configuration: the peer's hyper-parameters (see bench/throughput.py) over sumtune's defaults."""
    from sumtune.config import build_config

    return build_config(flags={
        "model.name": a.model, "method.name": a.method, "output_dir": a.out,
        **peer_method_flags(), "train.batch_size": a.batch_size, "train.grad_accum": a.grad_accum,
        "train.lr": 5e-4, "train.weight_decay": 0.0, "train.warmup_ratio": 0.0, "train.scheduler": "linear",
        "train.max_grad_norm": 1.0, "train.precision": a.precision, "train.fast": a.fast == "true",
        "train.epochs": a.epochs, "train.seed": 0,
    })


def train_epochs(cfg, accelerator, method, model, applied, loss_fn, ds, pad_id: int, epochs: int):
    """Train `epochs` epochs over `ds` with the trainer's pieces; (seconds at each epoch's end, step
    losses, trained parameters), timed from the optimizer's creation as the peer's Trainer.train() is."""
    from sumtune.data import Collator, epoch_order, micro_batches
    from sumtune.training import make_optimizer, optimizer_step

    tc = cfg.train
    collate = Collator(pad_id)
    per_step = tc.batch_size * tc.grad_accum
    steps_per_epoch = -(-len(ds) // per_step)

    t0 = time.perf_counter()  # from here on, what the peer's Trainer.train() times
    optimizer, scheduler = make_optimizer(model, method, tc, applied, steps_per_epoch * epochs)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    epoch_ends, losses = [], []
    for epoch in range(epochs):
        order = epoch_order(len(ds), tc.seed, epoch)
        for k in range(steps_per_epoch):
            batches = micro_batches(ds, order[k * per_step:(k + 1) * per_step], tc.batch_size, 1, 0, collate)
            losses.append(optimizer_step(accelerator, model, optimizer, scheduler, loss_fn, batches,
                                         trained, tc.max_grad_norm).loss)
        epoch_ends.append(time.perf_counter() - t0)
    return epoch_ends, losses, trained


def _peak_rss_mb() -> int | None:
    """This process's peak resident set so far (VmHWM), MB; None where /proc is unavailable."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) // 1024


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from datasets import Dataset

    from sumtune.modeling import load_model, load_tokenizer
    from sumtune.training import accelerator_for, method_model

    rows = [json.loads(line) for line in open(a.data) if line.strip()]
    cfg = bench_config(a)
    accelerator, precision = accelerator_for(cfg, Path(a.out))
    tokenizer = load_tokenizer(a.model)
    method, model, applied, loss_fn = method_model(cfg, tokenizer, load_model(a.model), precision)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    setup_peak = _peak_rss_mb()  # model loading and set-up; the process's peak (wait4) includes training
    epoch_ends, losses, trained = train_epochs(cfg, accelerator, method, model, applied, loss_fn, ds,
                                               tokenizer.pad_token_id, a.epochs)
    first = epoch_ends[0]
    tokens = len(rows) * statistics.mean(len(r["input_ids"]) for r in rows)  # as the peer counts
    print(json.dumps({
        "side": "sumtune", "method": a.method, "precision": precision, "fast": cfg.train.fast,
        "seconds": round(first, 2), "tokens_per_s": round(tokens / first, 1), "epochs": a.epochs,
        "seconds_all_epochs": round(epoch_ends[-1], 2), "epochs_over_first": round(epoch_ends[-1] / first, 3),
        "epoch_seconds": [round(b - e, 2) for b, e in zip(epoch_ends, [0.0] + epoch_ends[:-1])],
        "final_loss": losses[-1], "trainable_params": sum(p.numel() for p in trained),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "setup_peak_rss_mb": setup_peak, "loss_function": getattr(loss_fn, "__name__", type(loss_fn).__name__),
    }))


if __name__ == "__main__":
    main()
