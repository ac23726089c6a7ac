#!/usr/bin/env python3
"""Throughput of `sumtune serve` for 4 runs (zero_shot, prompt_tuning, lora, last_layers) on one
tiny base model built here (offline): rows of different runs batched together ("mixed", what
serve does) against rows batched per run ("per_run") and every summary decoded alone ("alone").

    PYTHONPATH=src python bench/serve_throughput.py [--requests 24] [--clients 8] [--tokens 32]
        [--hidden 128] [--layers 4] [--reps 2] [--precision fp32]

Each request asks for all 4 runs' summaries of one article (greedy, `--tokens` new tokens, no
early stop); `--clients` threads post them at once to a real uvicorn on 127.0.0.1. The three
modes share one loaded RunSet, alternate `--reps` times; summaries/s = 4 x requests / wall time.
Every mode must give the same summaries (fp32) - checked. Prints each run, then the medians and
the ratio mixed / alone.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import peer_method_flags

METHODS = ("zero_shot", "prompt_tuning", "lora", "last_layers")


def make_runs(root: Path, hidden: int, layers: int, precision: str) -> list[Path]:
    """A tiny GPT-Neo and one run per method, its trained parameters randomly moved (no training:
    throughput does not depend on the values)."""
    from sumtune.config import build_config, save_config
    from sumtune.io import atomic_write_json
    from sumtune.methods import get_method
    from sumtune.modeling import load_model, load_tokenizer
    from sumtune.runs import run_meta
    from sumtune.tiny import build_tiny_model, synthetic_news

    texts = [r["article"] + "\n" + r["highlights"] for r in synthetic_news(200, seed=1)]
    model_dir = build_tiny_model(root / "model", texts, hidden=hidden, layers=layers, heads=4)
    runs = []
    for m in METHODS:
        cfg = build_config(flags={"model.name": str(model_dir), "method.name": m, "output_dir": str(root / m)},
                           sets=[f"{k}={v}" for k, v in peer_method_flags(n_tokens=8).items()]
                           + [f"train.precision={precision}"])
        save_config(cfg, root / m / "config.yaml")
        method, tok, base = get_method(m), load_tokenizer(str(model_dir)), load_model(str(model_dir))
        meta = run_meta(cfg, base)
        model = method.prepare(base, tok, method.options(cfg.method))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.02)
        method.save(model, root / m / "adapter", meta)
        atomic_write_json(root / m / "results.json", {"method": m, "finished": True})
        runs.append(root / m)
    return runs


def start(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def measure(runset, mode: str, articles: list[str], clients: int, tokens: int) -> tuple[float, list]:
    import httpx

    from sumtune.serve import Limits, Service, create_app

    url, server, thread = start(create_app(Service(runset, Limits(max_queue=len(articles) + 1), mode=mode)))
    decoding = {"max_new_tokens": tokens, "min_new_tokens": tokens}  # fixed length: equal work per row

    def post(text):
        with httpx.Client(timeout=600) as c:
            r = c.post(url + "/summarize", json={"text": text, "decoding": decoding})
            r.raise_for_status()
            return [s["summary"] for s in r.json()["summaries"]]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(post, articles))
    seconds = time.perf_counter() - t0
    server.should_exit = True
    thread.join(10)
    return len(articles) * len(METHODS) / seconds, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--precision", default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from sumtune.multirun import RunSet
    from sumtune.tiny import synthetic_news

    with tempfile.TemporaryDirectory(prefix="sumtune-serve-bench-") as tmp:
        runset = RunSet(make_runs(Path(tmp), a.hidden, a.layers, a.precision))
        articles = [r["article"] for r in synthetic_news(a.requests, seed=3)]
        measure(runset, "mixed", articles[:2], 2, 4)  # warm-up
        rates: dict[str, list[float]] = {"mixed": [], "per_run": [], "alone": []}
        outputs = {}
        for rep in range(a.reps):
            for mode in rates:
                rate, outputs[mode] = measure(runset, mode, articles, a.clients, a.tokens)
                rates[mode].append(rate)
                print(f"rep {rep} {mode:8s} {rate:7.2f} summaries/s")
    same = outputs["mixed"] == outputs["per_run"] == outputs["alone"]
    med = {m: statistics.median(v) for m, v in rates.items()}
    print(f"{a.requests} requests x {len(METHODS)} runs, {a.clients} clients, {a.tokens} new tokens, "
          f"hidden {a.hidden}, {a.layers} layers, {a.precision}, torch threads 1; identical summaries: {same}")
    print("median summaries/s: " + ", ".join(f"{m} {v:.2f}" for m, v in med.items()))
    print(f"ratio mixed/alone {med['mixed'] / med['alone']:.2f}x, mixed/per_run {med['mixed'] / med['per_run']:.2f}x")
    sys.exit(0 if same or a.precision != "fp32" else 1)


if __name__ == "__main__":
    main()
