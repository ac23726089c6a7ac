"""Model FLOP utilisation for bench/throughput.py: achieved model FLOP/s over a bf16 matmul
peak measured on the same machine in the same run, so a figure means the same on a laptop,
a shared 2-core box or a GPU (a tokens/s ratio alone says nothing about how far from the
hardware both sides are).

Model FLOPs per token: `sumtune.flops` (the count `train.budget_flops` spends), with the
bench's last_layers being head-only (last_k_blocks 0).
"""

from __future__ import annotations

import time

import torch

from sumtune import flops


def flops_per_token(cfg, method: str, trainable: int) -> float:
    """Training model FLOPs per token for `method` on a Transformers config (`sumtune.flops`)."""
    return flops.flops_per_token(flops.model_shape(cfg), method, trainable)


def bf16_peak(seconds: float = 2.0, size: int = 1024) -> dict:
    """The best bf16 matmul rate of a few timed repetitions (FLOP/s) on this device with the
    current torch thread count, plus fp32's for context."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "size": size}
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * size ** 3 / (time.perf_counter() - t0))
        out["bf16_flops" if dtype == torch.bfloat16 else "fp32_flops"] = best
    return out


def mfu(tokens_per_s: float, per_token: float, peak_flops: float) -> float:
    return tokens_per_s * per_token / peak_flops


def mfu_fields(result: dict, model_dir, method: str, trainable: int, before: dict, after: dict,
               precision: str = "bf16") -> dict:
    """throughput.py's MFU keys: model FLOPs per token, the better of the peaks measured before
    and after the runs (GFLOP/s), and each side's MFU over the matmul peak of the precision the
    runs used (an fp32 run against bf16's peak would read as far above 100% on a CPU without bf16)."""
    from transformers import AutoConfig

    key = "fp32_flops" if precision == "fp32" and "fp32_flops" in before else "bf16_flops"
    peak = after if after[key] > before[key] else before
    per_token = flops_per_token(AutoConfig.from_pretrained(model_dir), method, trainable)
    out = {"model_flops_per_token": per_token, "mfu_peak": key.removesuffix("_flops"),
           "peak": {k: (round(v / 1e9, 1) if k.endswith("flops") else v) for k, v in peak.items()}}
    for side in ("sumtune", "peer"):
        out[f"{side}_mfu"] = round(mfu(result[f"{side}_tokens_per_s"], per_token, peak[key]), 4)
    return out
