#!/usr/bin/env python3
"""Run a Python script in this process, then print its peak CUDA memory as one JSON line.

    python bench/cuda_peak.py SCRIPT [ARGS...]

bench/throughput.py wraps the peer with it on a GPU (the peer script reports no CUDA memory), so
both sides' peaks are the same measure: torch.cuda.max_memory_allocated over the whole process.
"""

from __future__ import annotations

import json
import runpy
import sys

import torch


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python bench/cuda_peak.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
    mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    print(json.dumps({"cuda_peak_of": script, "peak_cuda_mb": mb}))


if __name__ == "__main__":
    main()
