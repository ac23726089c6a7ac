#!/usr/bin/env python3
"""Evaluation decoding side by side: sumtune's `Generator` (batched, SDPA attention,
per-prompt prefill) against Hugging Face `generate` at batch 1 (its default eager
attention), greedy, on the same model, prompts and precision.

    python bench/generate.py --data TOKENS.jsonl [--model gpt-neo-125m-random|DIR]
        [--n 8] [--max-new-tokens 64] [--batch-size 8] [--reps 2] [--json]

Prompts are the article part (labels -100) of the rows of a make_token_data.py file.
Both sides stop at EOS only (the blank-line stop rule is off: HF has none). The two
compute the same logits with different kernels (SDPA vs eager attention, batch 8 vs 1),
which round differently, so where a random model has two near-tied logits the greedy
choice can flip. The script reports how many outputs are identical, and for each that
is not, the gap between the two tokens' logits at the first difference (recomputed with
HF's model at batch 1 in fp32). It fails when a difference is not such a tie (gap above
1e-3 in fp32, 0.1 in bf16): that would be a bug, not rounding.
The two run alternately in one process (the attention is switched between runs);
printed: median summaries/s of each, the ratio, and whether the outputs matched.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from common import build_model, load_rows, precision_for

from sumtune.config import EvalConfig
from sumtune.decoding import Generator
from sumtune.fastpath import set_attention, speed_up


def hf_generate(model, prompts, eos: int, max_new: int, autocast) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = torch.tensor([p], device=model.device)
        with torch.inference_mode(), autocast():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos)
        out.append(seq[0, len(p):].tolist())
    return out


@torch.inference_mode()
def divergence_gaps(model, prompts, ref: list[list[int]], got: list[list[int]]) -> list[float]:
    """For each output that differs: |logit(ref token) - logit(got token)| at the first difference,
    from the model at batch 1 in fp32 with eager attention."""
    set_attention(model, "eager")
    gaps = []
    for p, a, b in zip(prompts, ref, got):
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if k is None:
            continue
        logits = model(torch.tensor([p + a[:k]], device=model.device)).logits[0, -1].float()
        gaps.append(abs(float(logits[a[k]] - logits[b[k]])))
    return gaps


def timed(fn, device: torch.device):
    """(fn(), seconds, peak CUDA MB allocated during it, 0 off CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--model", default="gpt-neo-125m-random")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="sumtune's decoding batch")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    return ap.parse_args(argv)


def load_prompts(path: str, n: int) -> list[list[int]]:
    """The article part (labels -100) of the first `n` rows of a make_token_data.py file."""
    return [[t for t, y in zip(r["input_ids"], r["labels"]) if y == -100] for r in load_rows(path)[:n]]


def build_sides(name: str, device: torch.device, dtype: torch.dtype | None):
    """(HF's model, sumtune's model, tokenizer): the same weights twice, HF's as users run it (autocast
    over fp32 weights), sumtune's prepared as `sumtune evaluate` prepares a run."""
    model, tokenizer = build_model(name)
    model.eval().to(device)
    ours, _ = build_model(name)
    ours.load_state_dict(model.state_dict())
    ours.eval().to(device)
    speed_up(ours, autocast=dtype, inference=True)
    return model, ours, tokenizer


def run_alternating(a: argparse.Namespace, prompts, model, ours, tokenizer, device: torch.device,
                    dtype: torch.dtype | None):
    """Both sides `a.reps` times, alternating (HF first on even reps); prints each run.
    (seconds per run, last outputs, peak CUDA MB) per side."""
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=dtype is not None)
    cfg = EvalConfig(batch_size=a.batch_size, num_beams=1, max_new_tokens=a.max_new_tokens)
    times: dict[str, list[float]] = {"sumtune": [], "hf": []}
    outputs: dict[str, list[list[int]]] = {}
    peak_mb: dict[str, float] = {}  # CUDA only: each side's peak allocated memory, weights included
    for rep in range(a.reps):
        for side in (("hf", "sumtune") if rep % 2 == 0 else ("sumtune", "hf")):
            def run(side=side):
                if side == "hf":
                    set_attention(model, "eager")  # what Transformers gives GPT-Neo
                    return hf_generate(model, prompts, tokenizer.eos_token_id, a.max_new_tokens, autocast)
                return Generator(ours, tokenizer, cfg, autocast=dtype, stop_at_blank_line=False).generate(prompts)

            outputs[side], seconds, mb = timed(run, device)
            times[side].append(seconds)
            peak_mb[side] = max(peak_mb.get(side, 0.0), mb)
            print(f"rep {rep} {side:8s} {len(prompts) / times[side][-1]:.3f} summaries/s", flush=True)
    return times, outputs, peak_mb


def summarise(a: argparse.Namespace, precision: str, prompts, times, outputs, peak_mb, gaps: list[float],
              device: torch.device) -> dict:
    """Median summaries/s of each side, their ratio and how far the outputs agree."""
    same = sum(h == s for h, s in zip(outputs["hf"], outputs["sumtune"]))
    prefix = [next((i for i, (x, y) in enumerate(zip(h, s)) if x != y), min(len(h), len(s)))
              for h, s in zip(outputs["hf"], outputs["sumtune"])]
    result = {
        "precision": precision, "model": a.model, "n": len(prompts),
        "prompt_tokens_mean": round(statistics.mean(map(len, prompts)), 1),
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "reps": a.reps,
        "sumtune_summaries_per_s": round(len(prompts) / statistics.median(times["sumtune"]), 4),
        "hf_summaries_per_s": round(len(prompts) / statistics.median(times["hf"]), 4),
        "identical_output": outputs["hf"] == outputs["sumtune"], "identical_prompts": same,
        "common_prefix_tokens_median": statistics.median(prefix), "max_logit_gap_at_divergence": max(gaps, default=0.0),
        "threads": torch.get_num_threads(), "device": device.type,
        "peak_cuda_mb": {k: round(v, 1) for k, v in peak_mb.items()} if device.type == "cuda" else None,
    }
    result["ratio"] = round(result["sumtune_summaries_per_s"] / result["hf_summaries_per_s"], 3)
    return result


def print_summary(r: dict) -> None:
    """The one-line comparison."""
    print(f"sumtune {r['sumtune_summaries_per_s']:.3f} summaries/s | HF generate batch 1 "
          f"{r['hf_summaries_per_s']:.3f} summaries/s | ratio {r['ratio']:.2f}x | "
          f"identical greedy output: {r['identical_output']} ({r['identical_prompts']}/{r['n']} prompts, common "
          f"prefix median {r['common_prefix_tokens_median']} tokens; logit gap at divergence max "
          f"{r['max_logit_gap_at_divergence']:.2e}) | {r['precision']}")


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = precision_for(a.precision)
    prompts = load_prompts(a.data, a.n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else None
    model, ours, tokenizer = build_sides(a.model, device, dtype)
    times, outputs, peak_mb = run_alternating(a, prompts, model, ours, tokenizer, device, dtype)
    gaps = divergence_gaps(model, prompts, outputs["hf"], outputs["sumtune"])
    result = summarise(a, precision, prompts, times, outputs, peak_mb, gaps, device)
    print_summary(result)
    if a.json:
        print(json.dumps(result))
    if max(gaps, default=0.0) > (1e-3 if precision == "fp32" else 0.1):
        raise SystemExit("outputs differ between sumtune and HF generate where the logits are not tied")
    return result


if __name__ == "__main__":
    main()
