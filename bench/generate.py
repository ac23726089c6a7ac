#!/usr/bin/env python3
"""Evaluation decoding side by side: sumtune's `Generator` against Hugging Face `generate`,
on the same model, prompts, precision, decoding settings and max/min new tokens.

    python bench/generate.py --data TOKENS.jsonl [--decoding greedy|cnndm] [--model gpt-neo-125m-random|DIR]
        [--n 8] [--max-new-tokens 64] [--batch-size 32] [--reps 3] [--peers hf_batched,hf_batch1] [--json]

The peers:
- `hf_batched` (the first row): what a user would run instead of sumtune: `generate` over
  the same batches of prompts (sorted by length as sumtune sorts them, `--batch-size` rows
  with the beams included, i.e. batch_size // beams prompts a call, as `eval.batch_size`),
  left-padded with an attention mask, SDPA attention (GPT-Neo: Transformers has none for it,
  so the peer gets sumtune's SDPA class, the fastest attention it can have; other models:
  Transformers' own), the same preset: `--decoding cnndm` is beam 4, length penalty 2.0, no
  repeated 3-gram within the summary (a LogitsProcessor over the generated tokens:
  `generate`'s own `no_repeat_ngram_size` would also ban the article's n-grams), early
  stopping as `generate`'s default (sumtune implements that heuristic), min/max new tokens;
- `hf_batch1`: `generate` one prompt at a time, eager attention (Transformers' default for
  GPT-Neo), the same settings: the comparison the earlier version of this script made.

Prompts are the article part (labels -100) of the rows of a make_token_data.py file. Every
side stops at EOS only (sumtune's blank-line rule is off: `generate` has none). A random
model hardly ever emits EOS, so the runs go to `--max-new-tokens` (64 by default: a few
minutes on 2 CPU cores; the cnndm preset's 55-token minimum is kept, capped at the maximum).

Outputs (`decode_ties.py`): for each output that differs from sumtune's, the script prints why:
the gap between the two tokens' logits at the first difference, and for beam search the gap between
the two summaries' beam scores per token, both recomputed at batch 1 in fp32 with eager attention.
A difference is a tie when either gap is below 1e-3 in fp32 (0.1 in bf16); the script fails on a
greedy difference that is not a tie (that would be a bug, not rounding). `hf_batched` is also
compared with `hf_batch1`: how far `generate` agrees with itself across batch sizes.

Near the physical limit (`decode_phases.py`, any decoder-only config): the model's forward is timed
per call and split into prefill (prompts) and incremental steps (one new token a row). Prefill:
achieved FLOP/s = model FLOPs of the real prompt tokens (2 x weight-matrix parameters per token, the
LM head once per prompt, causal attention 4 x query heads x head_dim x keys per token and layer;
windowed layers at most the window) / prefill seconds, against a matmul peak measured in the same
run (`mfu.py`). Steps: achieved bandwidth = bytes a step must read (every weight matrix once in the
compute dtype, plus each row's keys and values: key/value heads only, all real positions in global
layers, the window in local ones) / step seconds, against a STREAM-like copy measured here
(`--stream-mb` MB copied, counted read + write, median of 7). Both peaks are measured before and
after the runs; the better of the two is used. "search" is the rest of a run: beam/greedy
bookkeeping, cache reordering, the n-gram ban.

All sides run alternately in one process, the order rotating each rep; printed: median
summaries/s and generated tokens/s of each, the ratios, identical-output counts and the phases. Each
run's process CPU time is kept too: on a machine shared with other work, the ratio of CPU times
(`cpu_ratio`) is disturbed less than that of wall times (at one thread they agree on a quiet machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from common import build_model, load_rows, precision_for
from decode_phases import Phases, copy_bandwidth, model_shape, phase_figures
from decode_ties import compare, differences_text, logprob_noise
from mfu import bf16_peak
from transformers import LogitsProcessor, LogitsProcessorList

from sumtune.config import EvalConfig, apply_preset
from sumtune.decoding import Generator
from sumtune.fastpath import set_attention, speed_up

PEERS = ("hf_batched", "hf_batch1")


class SummaryNoRepeat(LogitsProcessor):
    """`generate`'s n-gram ban over the generated tokens only (after `prompt_len`, the padded width):
    what sumtune's `no_repeat_ngram_size` does (tests/test_generate.py uses the same at batch 1)."""

    def __init__(self, prompt_len: int, n: int):
        self.prompt_len, self.n = prompt_len, n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.n
        if input_ids.shape[1] - self.prompt_len < n - 1:
            return scores
        for r, row in enumerate(input_ids[:, self.prompt_len :].tolist()):
            tail = row[len(row) - n + 1 :] if n > 1 else []
            banned = [row[i + n - 1] for i in range(len(row) - n + 1) if row[i : i + n - 1] == tail]
            if banned:
                scores[r, banned] = float("-inf")
        return scores


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def hf_generate(model, prompts, eos: int, ev: EvalConfig, per_call: int, autocast) -> list[list[int]]:
    """`generate` over the prompts, `per_call` at a time (longest first, as sumtune batches them),
    left-padded; new tokens up to EOS, in input order."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), per_call):
        idx = order[start : start + per_call]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        kw = dict(max_new_tokens=ev.max_new_tokens, min_new_tokens=ev.min_new_tokens, num_beams=ev.num_beams,
                  do_sample=False, eos_token_id=eos, pad_token_id=eos, no_repeat_ngram_size=0)
        if ev.num_beams > 1:
            kw["length_penalty"] = ev.length_penalty
        if ev.no_repeat_ngram_size:
            kw["logits_processor"] = LogitsProcessorList([SummaryNoRepeat(width, ev.no_repeat_ngram_size)])
        with torch.inference_mode(), autocast():
            seq = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), **kw)
        for r, i in enumerate(idx):
            out[i] = until_eos(seq[r, width:].tolist(), eos)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--model", default="gpt-neo-125m-random")
    ap.add_argument("--decoding", default="greedy", choices=["greedy", "cnndm"],
                    help="the preset of `sumtune evaluate --decoding` (max/min new tokens: the flags below)")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--min-new-tokens", type=int, default=None,
                    help="default: the preset's (cnndm 55), capped at --max-new-tokens")
    ap.add_argument("--batch-size", type=int, default=EvalConfig().batch_size,
                    help="decoding rows, beams included (eval.batch_size): batch_size // beams prompts a batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stream-mb", type=int, default=512, help="buffer of the bandwidth measurement")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    a = ap.parse_args(argv)
    a.peers = [p for p in a.peers.split(",") if p]
    if not a.peers or set(a.peers) - set(PEERS):
        ap.error(f"--peers: give some of {', '.join(PEERS)}")
    return a


def load_prompts(path: str, n: int) -> list[list[int]]:
    """The article part (labels -100) of the first `n` rows of a make_token_data.py file."""
    return [[t for t, y in zip(r["input_ids"], r["labels"]) if y == -100] for r in load_rows(path)[:n]]


def decoding_config(a: argparse.Namespace) -> EvalConfig:
    ev = apply_preset(EvalConfig(batch_size=a.batch_size), a.decoding)
    ev.max_new_tokens = a.max_new_tokens
    ev.min_new_tokens = min(ev.min_new_tokens if a.min_new_tokens is None else a.min_new_tokens, a.max_new_tokens)
    return ev


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_alternating(a: argparse.Namespace, ev: EvalConfig, prompts, model, ours, tokenizer, device, dtype):
    """Every side `a.reps` times, the order rotating each rep; prints each run. Per side: seconds per run,
    phase figures per run, the last outputs and the peak CUDA MB (0 off CUDA)."""
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=dtype is not None)
    sides = ["sumtune", *a.peers]
    shape, elem = model_shape(model.config), 2 if dtype is not None else 4
    eos = tokenizer.eos_token_id
    per_call = max(1, ev.batch_size // ev.num_beams)
    runs = {s: {"seconds": [], "cpu_seconds": [], "phases": [], "outputs": None, "peak_cuda_mb": 0.0} for s in sides}
    for rep in range(a.reps):
        for side in sides[rep % len(sides):] + sides[: rep % len(sides)]:
            if side == "sumtune":
                lm, fn = ours, lambda: Generator(ours, tokenizer, ev, autocast=dtype,
                                                 stop_at_blank_line=False).generate(prompts)
            else:
                set_attention(model, "sdpa" if side == "hf_batched" else "eager")
                lm, fn = model, functools.partial(hf_generate, model, prompts, eos, ev,
                                                  per_call if side == "hf_batched" else 1, autocast)
            phases = Phases(lm)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            outputs = fn()
            sync(device)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            phases.close()
            r = runs[side]
            r["seconds"].append(seconds)
            r["cpu_seconds"].append(cpu)
            r["phases"].append(phase_figures(phases.calls, shape, elem, seconds))
            r["outputs"] = outputs
            if device.type == "cuda":
                r["peak_cuda_mb"] = max(r["peak_cuda_mb"], torch.cuda.max_memory_allocated() / 2**20)
            print(f"rep {rep} {side:10s} {len(prompts) / seconds:.3f} summaries/s ({cpu:.1f} s CPU)", flush=True)
    return runs


def side_row(r: dict, n: int, peak_flops: float, bandwidth: float) -> dict:
    """Median throughput and phases of one side."""
    sec = statistics.median(r["seconds"])
    med = {k: statistics.median(p[k] for p in r["phases"]) for k in r["phases"][0]}
    tokens = sum(map(len, r["outputs"]))
    row = {"summaries_per_s": round(n / sec, 4), "tokens_per_s": round(tokens / sec, 2), "seconds": round(sec, 3),
           "seconds_all": [round(s, 3) for s in r["seconds"]], "generated_tokens": tokens,
           "cpu_seconds": round(statistics.median(r["cpu_seconds"]), 3),
           "prefill_s": round(med["prefill_s"], 3), "step_s": round(med["step_s"], 3),
           "search_s": round(med["search_s"], 3), "steps": med["steps"],
           "step_ms": round(1e3 * med["step_s"] / max(med["steps"], 1), 2)}
    if med["prefill_s"] > 0:
        flops = med["prefill_flops"] / med["prefill_s"]
        row.update(prefill_gflops=round(flops / 1e9, 1), prefill_of_peak=round(flops / peak_flops, 4))
    if med["step_s"] > 0:
        bw = med["step_bytes"] / med["step_s"]
        row.update(step_gb_per_s=round(bw / 1e9, 2), step_of_copy_bandwidth=round(bw / bandwidth, 4))
    return row


def summarise(a, ev: EvalConfig, precision: str, prompts, runs, peak: dict, bandwidth: float, model,
              device: torch.device) -> dict:
    n, tol = len(prompts), 1e-3 if precision == "fp32" else 0.1
    peak_flops = peak["bf16_flops" if precision == "bf16" else "fp32_flops"]
    rows = {s: side_row(r, n, peak_flops, bandwidth) for s, r in runs.items()}
    for s in a.peers:
        rows[s]["ratio"] = round(rows["sumtune"]["summaries_per_s"] / rows[s]["summaries_per_s"], 3)
        rows[s]["cpu_ratio"] = round(rows[s]["cpu_seconds"] / rows["sumtune"]["cpu_seconds"], 3)
        rows[s]["vs_sumtune"] = compare(model, prompts, runs["sumtune"]["outputs"], runs[s]["outputs"], ev, tol)
    result = {
        "decoding": a.decoding, "num_beams": ev.num_beams, "no_repeat_ngram_size": ev.no_repeat_ngram_size,
        "length_penalty": ev.length_penalty, "min_new_tokens": ev.min_new_tokens, "max_new_tokens": ev.max_new_tokens,
        "precision": precision, "model": a.model, "n": n, "prompt_tokens_mean": round(statistics.mean(map(len, prompts)), 1),
        "batch_size": a.batch_size, "prompts_per_batch": max(1, a.batch_size // ev.num_beams), "reps": a.reps,
        "tie_tolerance": tol, "threads": torch.get_num_threads(), "device": device.type, "peak": {
            "device": peak["device"], "matmul_gflops": round(peak_flops / 1e9, 1),
            "copy_gb_per_s": round(bandwidth / 1e9, 2), "copy_mb": a.stream_mb},
        "sumtune": rows["sumtune"], "peers": {s: rows[s] for s in a.peers},
        "peak_cuda_mb": ({s: round(r["peak_cuda_mb"], 1) for s, r in runs.items()} if device.type == "cuda" else None),
    }
    result["sumtune_summaries_per_s"] = rows["sumtune"]["summaries_per_s"]
    if precision == "bf16":  # the scale of the rounding that parts the sides (ties are judged in fp32)
        result["bf16_logprob_noise"] = logprob_noise(model, prompts, runs["sumtune"]["outputs"], torch.bfloat16)
    if "hf_batched" in a.peers and "hf_batch1" in a.peers:
        same = sum(x == y for x, y in zip(runs["hf_batched"]["outputs"], runs["hf_batch1"]["outputs"]))
        result["hf_batched_vs_hf_batch1_identical"] = same
    if "hf_batch1" in a.peers:  # the keys of the batch-1 comparison, as before (bench/gpu_check.sh reads them)
        b1 = rows["hf_batch1"]
        result.update(hf_summaries_per_s=b1["summaries_per_s"], ratio=b1["ratio"],
                      identical_prompts=b1["vs_sumtune"]["identical"], identical_output=b1["vs_sumtune"]["identical"] == n)
    return result


def print_summary(r: dict) -> None:
    label = {"hf_batched": f"HF generate batch {r['prompts_per_batch']} prompts, SDPA",
             "hf_batch1": "HF generate batch 1, eager"}
    s, pk = r["sumtune"], r["peak"]
    print(f"== {r['decoding']} (beams {r['num_beams']}, {r['min_new_tokens']}-{r['max_new_tokens']} new tokens, "
          f"no-repeat {r['no_repeat_ngram_size']}, length penalty {r['length_penalty']}), {r['n']} prompts of "
          f"~{r['prompt_tokens_mean']:.0f} tokens, batch {r['batch_size']} rows, {r['precision']}, {r['device']}, "
          f"median of {r['reps']}")
    print(f"sumtune                          {s['summaries_per_s']:.3f} summaries/s {s['tokens_per_s']:8.1f} tokens/s")
    for name, p in r["peers"].items():
        c = p["vs_sumtune"]
        print(f"{label[name]:32s} {p['summaries_per_s']:.3f} summaries/s {p['tokens_per_s']:8.1f} tokens/s | "
              f"sumtune {p['ratio']:.2f}x (CPU time {p['cpu_ratio']:.2f}x) | identical {c['identical']}/{r['n']} ({differences_text(c)})")
    if "bf16_logprob_noise" in r:
        noise = r["bf16_logprob_noise"]
        print(f"bf16 moves the model's log-probabilities of sumtune's tokens by {noise['mean']:.3f} per token on "
              f"average (99th percentile {noise['p99']:.3f}) from fp32: the rounding that parts the sides")
    if "hf_batched_vs_hf_batch1_identical" in r:
        print(f"HF batched vs HF batch 1: identical {r['hf_batched_vs_hf_batch1_identical']}/{r['n']}")
    print(f"phases (median seconds; prefill against {pk['matmul_gflops']} GFLOP/s matmul, steps against "
          f"{pk['copy_gb_per_s']} GB/s copy):")
    for name, row in [("sumtune", s), *r["peers"].items()]:
        pre = f"{row['prefill_gflops']} GFLOP/s = {100 * row['prefill_of_peak']:.1f}%" if "prefill_gflops" in row else "-"
        step = (f"{row['step_ms']} ms x {row['steps']:.0f}, {row['step_gb_per_s']} GB/s = "
                f"{100 * row['step_of_copy_bandwidth']:.1f}%") if "step_gb_per_s" in row else "-"
        print(f"  {name:10s} prefill {row['prefill_s']:.2f} s ({pre}) | steps {row['step_s']:.2f} s ({step}) | "
              f"search {row['search_s']:.2f} s")


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    precision = precision_for(a.precision)
    prompts = load_prompts(a.data, a.n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else None
    ev = decoding_config(a)
    model, ours, tokenizer = build_sides(a.model, device, dtype)
    before = bf16_peak(seconds=1.0), copy_bandwidth(device, a.stream_mb)
    runs = run_alternating(a, ev, prompts, model, ours, tokenizer, device, dtype)
    after = bf16_peak(seconds=1.0), copy_bandwidth(device, a.stream_mb)
    key = "bf16_flops" if precision == "bf16" else "fp32_flops"
    peak = max(before[0], after[0], key=lambda p: p[key])  # a busy machine only lowers them: the better
    bandwidth = max(before[1], after[1])
    result = summarise(a, ev, precision, prompts, runs, peak, bandwidth, model, device)
    print_summary(result)
    if a.json:
        print(json.dumps(result))
    greedy_bugs = [d for p in result["peers"].values() for d in p["vs_sumtune"]["differences"]
                   if not d["tie"] and ev.num_beams == 1]
    if greedy_bugs:
        raise SystemExit("outputs differ between sumtune and HF generate where the logits are not tied")
    return result


if __name__ == "__main__":
    main()
