"""Model FLOP utilisation for bench/throughput.py: achieved model FLOP/s over a bf16 matmul
peak measured on the same machine in the same run, so a figure means the same on a laptop,
a shared 2-core box or a GPU (a tokens/s ratio alone says nothing about how far from the
hardware both sides are).

Model FLOPs per token (attention scores left out, as in the usual 6N count), with N the
multiply-accumulates per token of the weight matrices (blocks plus the LM head):
- forward 2N;
- gradients with respect to activations 2N where something trains below the head (LoRA, a
  soft prompt: the gradient must reach the bottom of the model);
- gradients with respect to weights: 2 x the trained matrices' size (full fine-tuning: 2N,
  which gives the usual 6N; LoRA and soft prompt: their few parameters; head-only: the head).
"""

from __future__ import annotations

import time

import torch


def matmul_params(cfg) -> tuple[int, int]:
    """(N: weight-matrix multiply-accumulates per token, head: the LM head's share) of a
    GPT-Neo/GPT-2 config: 12 d^2 per block (attention 4 d^2, MLP 8 d^2) plus the head V x d."""
    d = cfg.hidden_size
    layers = getattr(cfg, "num_layers", None) or cfg.n_layer
    inner = getattr(cfg, "intermediate_size", None) or 4 * d
    head = cfg.vocab_size * d
    return layers * (4 * d * d + 2 * d * inner) + head, head


def flops_per_token(cfg, method: str, trainable: int) -> float:
    """Training model FLOPs per token for `method` (see the module docstring)."""
    n, head = matmul_params(cfg)
    if method == "last_layers":  # head only (the bench's last_k_blocks 0): forward + the head's weight gradient
        return 2 * n + 2 * head
    return 2 * n + 2 * n + 2 * trainable


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


def mfu_fields(result: dict, model_dir, method: str, trainable: int, before: dict, after: dict) -> dict:
    """throughput.py's MFU keys: model FLOPs per token, the better of the peaks measured before
    and after the runs (GFLOP/s), and each side's MFU over its bf16 figure."""
    from transformers import AutoConfig

    peak = after if after["bf16_flops"] > before["bf16_flops"] else before
    per_token = flops_per_token(AutoConfig.from_pretrained(model_dir), method, trainable)
    out = {"model_flops_per_token": per_token,
           "peak": {k: (round(v / 1e9, 1) if k.endswith("flops") else v) for k, v in peak.items()}}
    for side in ("sumtune", "peer"):
        out[f"{side}_mfu"] = round(mfu(result[f"{side}_tokens_per_s"], per_token, peak["bf16_flops"]), 4)
    return out
