"""The bf16 dense matmul peak MFU is measured against, on the device the benchmark runs on.

On a CPU: bench/mfu.py's `bf16_peak` (1024^3 products). On a CUDA GPU: the best rate of timed
batches of 8192^3 bf16 products (after a warm-up; small products do not fill an H100/H200), plus,
labelled as such, the vendor datasheet's dense bf16 figure where the device name is one we know.
"""

from __future__ import annotations

import time

import torch
from mfu import bf16_peak

# Vendor datasheets, dense bf16 tensor-core FLOP/s (half the "with sparsity" figure), by the name
# torch.cuda.get_device_name() reports. SXM parts: NVIDIA H100 and H200 datasheets; NVL: H200 NVL.
DATASHEET_BF16_DENSE = {
    "NVIDIA H200": 989.5e12,
    "NVIDIA H100 80GB HBM3": 989.5e12,
    "NVIDIA H200 NVL": 835.5e12,
}


def cuda_bf16_peak(seconds: float, size: int = 8192, batch: int = 10) -> dict:
    """bf16_peak's fields for the current CUDA device: the best of timed batches of `batch` products."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(batch):
            a @ b
        torch.cuda.synchronize()
        best = max(best, batch * 2 * size**3 / (time.perf_counter() - t0))
    del a, b
    torch.cuda.empty_cache()  # the benchmark's children need the memory, not this process
    name = torch.cuda.get_device_name()
    out = {"device": name, "threads": torch.get_num_threads(), "size": size, "bf16_flops": best}
    if name in DATASHEET_BF16_DENSE:
        out["datasheet_bf16_dense_flops"] = DATASHEET_BF16_DENSE[name]
    return out


def device_peak(seconds: float = 2.0) -> dict:
    """The measured bf16 matmul peak of this run's device (see the module doc)."""
    return cuda_bf16_peak(seconds) if torch.cuda.is_available() else bf16_peak(seconds)
