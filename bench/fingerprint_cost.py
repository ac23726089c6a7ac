"""Cost of the content fingerprints on this machine: the weights hash of a
GPT-Neo-125M-shaped model with random weights (sha256 vs blake2b over the state_dict,
and hashlib.file_digest of its safetensors file), and sha256 throughput over a data file.

    PYTHONPATH=src python bench/fingerprint_cost.py [--data-mb 1300] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch


def best_of(fn, n: int = 2) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-mb", type=int, default=1300)
    p.add_argument("--tmp", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from sumtune import fingerprints

    cfg = GPTNeoConfig(hidden_size=768, num_layers=12, num_heads=12, vocab_size=50257,
                       max_position_embeddings=2048, attention_types=[[["global", "local"], 6]])
    model = GPTNeoForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        model.save_pretrained(tmp)
        st = Path(tmp) / "model.safetensors"
        print(f"weights: {st.stat().st_size / 1e6:.0f} MB safetensors")
        print(f"fingerprints.weights_sha (sha256, state_dict fp32): {best_of(lambda: fingerprints.weights_sha(model)):.3f} s")
        real = hashlib.sha256
        hashlib.sha256 = hashlib.blake2b  # same walk, other hash
        try:
            print(f"same walk with blake2b: {best_of(lambda: fingerprints.weights_sha(model)):.3f} s")
        finally:
            hashlib.sha256 = real
        for algo in ("sha256", "blake2b"):
            def digest(algo=algo):
                with open(st, "rb") as f:
                    hashlib.file_digest(f, algo)
            print(f"file_digest({algo}) of model.safetensors (page cache): {best_of(digest):.3f} s")
        data = Path(tmp) / "train.csv"
        chunk = os.urandom(1 << 20)
        with open(data, "wb") as f:
            for _ in range(args.data_mb):
                f.write(chunk)
        t = time.perf_counter()
        fingerprints.file_sha256(data)  # a new path, so not in file_sha256's in-process cache yet
        dt = time.perf_counter() - t
        print(f"file_sha256 of {args.data_mb} MB (just written, page cache): {dt:.2f} s = {args.data_mb / dt:.0f} MB/s")
        t = time.perf_counter()
        fingerprints.file_sha256(data)
        print(f"again, cached per (path, size, mtime_ns): {time.perf_counter() - t:.4f} s")


if __name__ == "__main__":
    main()
