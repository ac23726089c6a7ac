#!/usr/bin/env python3
"""Training throughput side by side: sumtune's trainer against the peer (Hugging Face
Trainer + PEFT, ../shared/bench/peer_hf_trainer.py), on the same pre-tokenised rows,
model, hyper-parameters and precision.

    python bench/throughput.py --method {lora,prompt_tuning,last_layers} --data TOKENS.jsonl
        [--model gpt-neo-125m-random|gpt-neo-small-random|DIR (any causal LM)] [--steps 1] [--reps 3]
        [--precision auto] [--epochs-last-layers 10] [--json]

Both sides: LoRA r 8, alpha 16, dropout 0.05 on every attention and MLP linear layer;
12 virtual tokens; head-only with the head untied; batch 2 x accumulation 4; lr 5e-4,
clipping 1.0; fused AdamW; the precision `--precision` resolves to on this machine
(auto: bf16 on a CUDA GPU with bf16 or a CPU with AMX/AVX512-BF16, else fp16 on a CUDA GPU,
else fp32 on the CPU; the peer gets --bf16 exactly when it is bf16, and has no fp16 flag).
Each side trains `--steps` optimizer steps on the first steps x 8 rows of the file (each
row seen once, in a fresh process each time) and the two alternate, `--reps` times.
tokens/s = rows x mean row length / training seconds, as the peer counts it; peak RSS
is the process's maximum resident set (wait4), model building included, for both (sumtune's run
lines also give its peak before training; bench/step_memory.py breaks a step's memory down).
For last_layers sumtune also trains `--epochs-last-layers` epochs over the same rows
(feature cache after the first) and reports that time over its first epoch.

Printed: each run, then medians and ratios, and each side's model FLOP utilisation (MFU:
achieved model FLOP/s over the matmul peak of the run's precision measured here, before and after the runs,
the better of the two, on the device the run uses: bench/peak.py; bench/mfu.py says what counts
as model FLOPs); with --json the last line is one JSON object. On a CUDA GPU also each side's
peak CUDA memory (torch.cuda.max_memory_allocated; the peer through bench/cuda_peak.py) and,
where bench/peak.py knows the device, the MFU against its datasheet dense bf16 figure.
A run during which other processes used more than 10% of the CPUs is marked "busy" and
left out of the medians when each side has a run that is not (on a machine shared with other
work, a busy neighbour can slow the matmuls enough to swamp the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from common import RANDOM_125M, load_rows, precision_for, write_model_dir  # noqa: E402
from mfu import mfu_fields  # noqa: E402
from peak import device_peak  # noqa: E402

PEER = HERE.parent.parent / "shared" / "bench" / "peer_hf_trainer.py"
PEER_METHOD = {"lora": "lora", "prompt_tuning": "prompt_tuning", "last_layers": "last_layer"}
BATCH, ACCUM = 2, 4
BUSY = 0.1  # a run during which other processes used more than this share of the CPUs


def _busy_seconds() -> float:
    """CPU seconds spent by all processes on the machine so far (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], log: Path) -> dict:
    """Run one side; its last JSON line, plus its peak RSS and the CPU others used meanwhile."""
    busy0, t0 = _busy_seconds(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so its rusage is the child's alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{out[-3000:]}")
    lines = [x for x in out.splitlines() if x.startswith("{")]
    result = json.loads(lines[-1])
    if "cuda_peak_of" in result:  # bench/cuda_peak.py's line, after the wrapped peer's own
        result = {**json.loads(lines[-2]), "peak_cuda_mb": result["peak_cuda_mb"]}
    own = usage.ru_utime + usage.ru_stime
    result["peak_rss_mb"] = usage.ru_maxrss // 1024
    result["cpu_user_s"], result["cpu_sys_s"] = round(usage.ru_utime, 1), round(usage.ru_stime, 1)
    result["others_cpu_share"] = round(max(0.0, _busy_seconds() - busy0 - own) / (wall * (os.cpu_count() or 1)), 3)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True, choices=["lora", "prompt_tuning", "last_layers"])
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py)")
    ap.add_argument("--model", default=RANDOM_125M, help=f"{RANDOM_125M}, gpt-neo-small-random, or any local model directory "
                    "(any AutoModelForCausalLM family)")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per run (8 rows each)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--epochs-last-layers", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: default)")
    ap.add_argument("--peer", default=str(PEER))
    ap.add_argument("--workdir", default=None, help="where the model copy and logs go (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--peak-seconds", type=float, default=2.0, help="matmul timing for the bf16 peak (each time)")
    return ap.parse_args(argv)


def stage_inputs(a: argparse.Namespace, work: Path) -> tuple[list[dict], Path, Path]:
    """(the rows both sides train on, their file, the model directory), written under `work`."""
    n_rows = a.steps * BATCH * ACCUM
    rows = load_rows(a.data)
    if len(rows) < n_rows:
        raise SystemExit(f"{a.data} has {len(rows)} rows; --steps {a.steps} needs {n_rows}")
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_rows]))
    return rows[:n_rows], data, write_model_dir(a.model, work / "model")


def side_commands(a: argparse.Namespace, precision: str, data: Path, model_dir: Path, work: Path,
                  epochs: int) -> dict[str, list[str]]:
    """The command line of each side: the peer script and our worker, on the same rows and settings."""
    wrap = [str(HERE / "cuda_peak.py")] if torch.cuda.is_available() else []  # the peer's peak CUDA memory
    peer = [sys.executable, *wrap, a.peer, "--data", str(data), "--method", PEER_METHOD[a.method],
            "--model", a.model if a.model == RANDOM_125M else str(model_dir),
            "--batch-size", str(BATCH), "--grad-accum", str(ACCUM), "--max-steps", str(a.steps),
            "--out", str(work / "peer"), "--threads", str(a.threads)] + (["--bf16"] if precision == "bf16" else [])
    ours = [sys.executable, str(HERE / "throughput_worker.py"), "--data", str(data), "--method", a.method,
            "--model", str(model_dir), "--batch-size", str(BATCH), "--grad-accum", str(ACCUM),
            "--epochs", str(epochs), "--precision", precision, "--threads", str(a.threads),
            "--out", str(work / "sumtune")]
    return {"peer": peer, "sumtune": ours}


def run_alternating(cmds: dict[str, list[str]], reps: int, work: Path, epochs: int) -> dict[str, list[dict]]:
    """Each side `reps` times, the two alternating (peer first on even reps); prints each run."""
    runs: dict[str, list[dict]] = {"sumtune": [], "peer": []}
    for rep in range(reps):
        for side in (("peer", "sumtune") if rep % 2 == 0 else ("sumtune", "peer")):
            r = run_child(cmds[side], work / f"{side}-{rep}.log")
            runs[side].append(r)
            busy = f" busy ({r['others_cpu_share']:.0%} CPU used by others)" if r["others_cpu_share"] > BUSY else ""
            extra = (f" | {epochs} epochs {r['seconds_all_epochs']:.1f} s = {r['epochs_over_first']:.2f} x first"
                     if side == "sumtune" and epochs > 1 else "")
            setup = f" ({r['setup_peak_rss_mb']} MB before training)" if r.get("setup_peak_rss_mb") else ""
            print(f"rep {rep} {side:8s} {r['tokens_per_s']:8.1f} tokens/s  {r['seconds']:7.1f} s  "
                  f"peak RSS {r['peak_rss_mb']} MB{setup}{extra}{busy}", flush=True)
    return runs


def runs_for_medians(runs: dict[str, list[dict]], side: str) -> list[dict]:
    """The runs no other process disturbed, when each side has one; else all runs."""
    quiet = [r for r in runs[side] if r["others_cpu_share"] <= BUSY]
    both = all(any(r["others_cpu_share"] <= BUSY for r in runs[s]) for s in runs)
    return quiet if both else runs[side]


def median_of(runs: dict[str, list[dict]], side: str, key: str) -> float:
    """The median of `key` over `side`'s runs that count (runs_for_medians)."""
    return statistics.median(r[key] for r in runs_for_medians(runs, side))


def summarise(a: argparse.Namespace, precision: str, rows: list[dict], runs: dict[str, list[dict]]) -> dict:
    """Medians over runs_for_medians and the ratios (the caller adds the MFU fields)."""
    result = {
        "method": a.method, "model": a.model, "precision": precision, "rows": len(rows), "steps": a.steps,
        "reps": a.reps, "mean_row_tokens": round(statistics.mean(len(r["input_ids"]) for r in rows), 1),
        "sumtune_tokens_per_s": round(median_of(runs, "sumtune", "tokens_per_s"), 1),
        "peer_tokens_per_s": round(median_of(runs, "peer", "tokens_per_s"), 1),
        "sumtune_peak_rss_mb": int(median_of(runs, "sumtune", "peak_rss_mb")),
        "peer_peak_rss_mb": int(median_of(runs, "peer", "peak_rss_mb")),
        "busy_runs": sum(r["others_cpu_share"] > BUSY for side in runs.values() for r in side),
        "runs_in_medians": {side: len(runs_for_medians(runs, side)) for side in runs},
    }
    if torch.cuda.is_available():
        for side in ("sumtune", "peer"):
            result[f"{side}_peak_cuda_mb"] = median_of(runs, side, "peak_cuda_mb")
        result["cuda_memory_ratio"] = round(result["sumtune_peak_cuda_mb"] / result["peer_peak_cuda_mb"], 3)
    result["ratio"] = round(result["sumtune_tokens_per_s"] / result["peer_tokens_per_s"], 3)
    result["rss_ratio"] = round(result["sumtune_peak_rss_mb"] / result["peer_peak_rss_mb"], 3)
    return result


def print_summary(result: dict, epochs: int) -> None:
    """The one-line summary of the medians, ratios and MFU."""
    r = result
    print(f"{r['method']} ({r['precision']}, {r['rows']} rows x {r['mean_row_tokens']} tokens, {r['reps']} reps, "
          f"medians): sumtune {r['sumtune_tokens_per_s']} tokens/s, peer {r['peer_tokens_per_s']} tokens/s, "
          f"ratio {r['ratio']:.2f}x; peak RSS {r['sumtune_peak_rss_mb']} vs {r['peer_peak_rss_mb']} MB "
          f"({r['rss_ratio']:.2f}x); MFU sumtune {100 * r['sumtune_mfu']:.1f}%, peer "
          f"{100 * r['peer_mfu']:.1f}% of a {r['peak'][r['mfu_peak'] + '_flops']} GFLOP/s {r['mfu_peak']} matmul peak measured on "
          f"{r['peak']['device']}"
          + (f" ({100 * r['sumtune_mfu_datasheet']:.1f}% / {100 * r['peer_mfu_datasheet']:.1f}% of the datasheet's "
             f"{r['peak']['datasheet_bf16_dense_flops']} GFLOP/s dense bf16)" if "sumtune_mfu_datasheet" in r else "")
          + (f"; peak CUDA memory {r['sumtune_peak_cuda_mb']} vs {r['peer_peak_cuda_mb']} MB"
             if "peer_peak_cuda_mb" in r else "")
          + (f"; {epochs} epochs = {r['epochs_over_first']:.2f} x the first" if epochs > 1 else ""))


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    peak = device_peak(a.peak_seconds)

    precision = precision_for(a.precision)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="sumtune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, data, model_dir = stage_inputs(a, work)
    epochs = a.epochs_last_layers if a.method == "last_layers" else 1
    runs = run_alternating(side_commands(a, precision, data, model_dir, work, epochs), a.reps, work, epochs)

    result = summarise(a, precision, rows, runs)
    result.update(mfu_fields(result, model_dir, a.method, runs["sumtune"][0]["trainable_params"],
                             peak, device_peak(a.peak_seconds), precision))
    sheet = result["peak"].get("datasheet_bf16_dense_flops")
    if sheet:  # GFLOP/s, as mfu_fields rounds the peak
        for side in ("sumtune", "peer"):
            result[f"{side}_mfu_datasheet"] = round(result[f"{side}_tokens_per_s"] * result["model_flops_per_token"]
                                                    / (sheet * 1e9), 4)
    if epochs > 1:
        result["epochs"] = epochs
        result["epochs_over_first"] = round(median_of(runs, "sumtune", "epochs_over_first"), 3)
    print_summary(result, epochs)
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
