"""Where a profiled step's time goes, by op family (for bench/profile_step.py).

Each profiler event's self CPU time is put in one family by its operator name and in one
phase by its ancestors: backward (under an autograd engine node), optimizer (under
`Optimizer.step`), else forward (which includes gradient clipping). Families: GEMMs (mm,
addmm, bmm, ...), attention (the SDPA kernels), casts (copy_/to), dropout (random bits,
the keep-mask compare, bernoulli), GELU (and tanh, pow), SiLU, norms (RMSNorm's rsqrt; its
pow counts as GELU, its mean as other), loss (log-softmax, NLL, logsumexp),
optimizer (AdamW, foreach, the gradient norm), elementwise (add, mul, ...), other.
"""

from __future__ import annotations

import re
from collections import defaultdict

FAMILIES: tuple[tuple[str, str], ...] = (
    ("gemm", r"^aten::(mm|addmm|bmm|baddbmm|addmv|mv|linear|matmul)$|mkldnn.*(matmul|linear)"),
    ("attention", r"scaled_dot_product|flash_attention|efficient_attention"),
    ("cast", r"^aten::(copy_|_to_copy|to)$"),
    ("dropout", r"^aten::(random_|bernoulli_|ge|native_dropout|native_dropout_backward)$"),
    ("gelu", r"^aten::(gelu|gelu_backward|tanh|tanh_backward|pow)$"),
    ("silu", r"^aten::(silu|silu_backward|sigmoid)$"),
    ("norm", r"layer_norm|rms_norm|^aten::rsqrt$"),
    ("loss", r"log_softmax|nll_loss|logsumexp|cross_entropy"),
    ("optimizer", r"adamw|_foreach_|linalg_vector_norm|^aten::norm$|clamp"),
    ("elementwise", r"^aten::(add|add_|mul|mul_|div|div_|sub|sub_|neg|where|masked_fill_?|fill_|zero_|sum|"
                    r"lerp_|sqrt|addcmul_|addcdiv_|exp|cat|index|index_select|embedding.*)$"),
)
PHASES = ("forward", "backward", "optimizer")


def family_of(name: str) -> str:
    for family, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return family
    return "other"


def phase_of(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("autograd::engine"):
            return "backward"
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        parent = parent.cpu_parent
    return "forward"


def by_family(events) -> tuple[dict[tuple[str, str], float], float]:
    """({(family, phase): self CPU seconds}, the GEMMs' counted FLOPs (the profiler's with_flops))."""
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    gemm_flops = 0.0
    for e in events:
        family = family_of(e.name)
        seconds[family, phase_of(e)] += e.self_cpu_time_total / 1e6
        if family == "gemm":
            gemm_flops += e.flops or 0
    return seconds, gemm_flops


def family_table(events, wall_s: float, peak_flops: float, model_flops: float | None, dtype: str = "bf16",
                 flop_events=None) -> str:
    """The breakdown as text: seconds and share of the self time per family and phase, the GEMMs'
    achieved rate against `peak_flops`, and (training) the MFU of the step and its bound if only
    the GEMMs took time (`model_flops`: bench/mfu.py's count for the step). `flop_events`: a profile
    of the same work with `with_flops` for the GEMMs' FLOPs, where `events` was recorded without it
    (recording shapes slows elementwise ops several-fold, which would skew their shares)."""
    seconds, gemm_flops = by_family(events)
    if flop_events is not None:
        gemm_flops = by_family(flop_events)[1]
    total = sum(seconds.values())
    families = [f for f, _ in FAMILIES] + ["other"]
    lines = [f"time per op family (self CPU time, total {total:.3f} s; step wall {wall_s:.3f} s under the profiler)",
             f"{'family':12s}" + "".join(f"{p:>11s}" for p in PHASES) + f"{'total':>11s}{'share':>8s}"]
    for f in sorted(families, key=lambda f: -sum(seconds[f, p] for p in PHASES)):
        row = sum(seconds[f, p] for p in PHASES)
        if row:
            lines.append(f"{f:12s}" + "".join(f"{seconds[f, p]:11.3f}" for p in PHASES)
                         + f"{row:11.3f}{100 * row / total:7.1f}%")
    gemm = sum(seconds["gemm", p] for p in PHASES)
    if gemm:
        lines.append(f"GEMMs: {gemm_flops / 1e9:.1f} GFLOP in {gemm:.3f} s = {gemm_flops / gemm / 1e9:.1f} GFLOP/s, "
                     f"{100 * gemm_flops / gemm / peak_flops:.1f}% of the {peak_flops / 1e9:.1f} GFLOP/s {dtype} matmul "
                     "peak measured now")
    if model_flops and gemm:
        lines.append(f"model FLOPs of the step {model_flops / 1e9:.1f} G: MFU of this step {100 * model_flops / wall_s / peak_flops:.1f}% "
                     f"(profiler overhead included); with every non-GEMM op free "
                     f"{100 * model_flops / gemm / peak_flops:.1f}%; with the GEMMs at the peak too, model FLOPs / GEMM "
                     f"FLOPs = {100 * model_flops / gemm_flops:.0f}%")
    return "\n".join(lines)
