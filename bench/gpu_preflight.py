#!/usr/bin/env python3
"""The first two checks of bench/gpu_check.sh, each one JSON line and a non-zero exit on failure:

    python bench/gpu_preflight.py device    # torch sees a CUDA device: its name, memory, bf16, versions
    python bench/gpu_preflight.py packages  # every package the checks import is there
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

# import name -> pip name: what the CUDA tests, the benchmarks and qlora_check.py import
PACKAGES = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
            "datasets": "datasets", "tokenizers": "tokenizers", "rouge_score": "rouge-score", "pysbd": "pysbd",
            "safetensors": "safetensors", "yaml": "pyyaml", "matplotlib": "matplotlib", "pytest": "pytest",
            "bitsandbytes": "bitsandbytes"}


def device() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 1
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                      "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__, "cuda": torch.version.cuda}))
    return 0


def packages() -> int:
    missing = [pip for mod, pip in PACKAGES.items() if importlib.util.find_spec(mod) is None]
    print(json.dumps({"missing": missing}))
    if missing:
        print(f"missing packages: {' '.join(missing)} (carry their wheels and set WHEELS=DIR)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["device", "packages"])
    sys.exit(device() if ap.parse_args().what == "device" else packages())
