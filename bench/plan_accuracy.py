#!/usr/bin/env python3
"""`sumtune plan`'s projection against the measured run it projects, side by side.

    python bench/plan_accuracy.py --method {lora,prompt_tuning,last_layers,full,...} --data TOKENS.jsonl|CSV_DIR
        [--model gpt-neo-125m-random|gpt-neo-small-random|NAME|DIR] [--train-rows 16] [--val-rows 4] [--test-rows 4]
        [--epochs 1] [--batch-size 2] [--grad-accum 1] [--max-length N] [--decoding greedy] [--max-new-tokens 32]
        [--eval-batch-size 2] [--calibration-steps N] [--calibration-articles N] [--precision auto] [--threads 0]
        [--set key=value ...] [--json]

A real model (any other --model: a name sumtune loads, e.g. smollm2-135m-instruct, or a model
directory) trains on real text: --data is then a data source (e.g. ../shared/data/cnndm, a Kaggle
CSV directory), its first --train-rows / --val-rows / --test-rows rows (data.max_*_samples),
--max-length tokens a row (default 512), and --set passes config keys (e.g. data.prompt_format=chat).

The rows are make_token_data.py's (../shared/bench/make_token_data.py): each token id becomes one
word of a word-level tokenizer saved with the model (`w<id>`; ids above 50,251 fold onto
id mod 50,252, where the separator's four tokens and EOS live), so sumtune's text pipeline -
CSV files, cleaning, tokenising - trains on exactly those token sequences. The model is GPT-Neo
with random weights in the 125M shape (as bench/throughput.py builds it; no download).

In one process, as `sumtune experiment` would run them: `recipes.plan.run_plan` for the method,
then `recipes.train.train` and `recipes.evaluate.evaluate_run` of the same configuration.
Printed per figure: projected, measured, error (projected / measured - 1):
- train_seconds (results.json: optimizer steps only) vs the projected steps x median step;
- validation_seconds (results.json) vs the projected validation passes and best-weight saves;
- evaluation wall time (loading, loss, decoding, scoring, writing) vs the projected evaluation;
- generation_seconds (metrics.json) vs the projected decoding;
- peak memory of training (results.json, its kind) vs the projected training peak.
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from common import RANDOM_125M, RANDOM_SMALL, load_rows, random_gpt_neo  # noqa: E402

WORDS = 50252  # token ids 0..50251 are words; then the separator's tokens and EOS
SEPARATOR = ("TL", ";", "DR", ":")
EOS = "<|endoftext|>"


def word_tokenizer():
    """A word-level fast tokenizer: `w<id>` is token id, whitespace splits words (the separator
    "\\nTL;DR:\\n" is four tokens), EOS last: 50,257 tokens, GPT-Neo's vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(WORDS)}
    vocab.update({t: WORDS + k for k, t in enumerate(SEPARATOR)})
    vocab[EOS] = WORDS + len(SEPARATOR)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def stage(a: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(model directory, Kaggle-layout data directory) under `work`, from the token rows."""
    rows = load_rows(a.data)
    need = a.train_rows + a.val_rows + a.test_rows
    if len(rows) < need:
        raise SystemExit(f"{a.data} has {len(rows)} rows; --train-rows + --val-rows + --test-rows need {need}")
    model_dir, data_dir = work / "model", work / "data"
    if not (model_dir / "config.json").is_file():
        random_gpt_neo(a.model).save_pretrained(model_dir)
        word_tokenizer().save_pretrained(model_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    def text(ids: list[int]) -> str:
        return " ".join(f"w{i % WORDS}" for i in ids)

    start = 0
    for split, n in (("train", a.train_rows), ("validation", a.val_rows), ("test", a.test_rows)):
        with open(data_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
            w.writeheader()
            for k, r in enumerate(rows[start:start + n]):
                cut = sum(1 for x in r["labels"] if x == -100)
                w.writerow({"id": f"{split}-{k}", "article": text(r["input_ids"][:cut]),
                            "highlights": text(r["input_ids"][cut:])})
        start += n
    return model_dir, data_dir


def synthetic(a: argparse.Namespace) -> bool:
    return a.model in (RANDOM_125M, RANDOM_SMALL)


def config(a: argparse.Namespace, model_dir: Path | str, data_dir: Path | str, out: Path):
    from sumtune.config import build_config

    if synthetic(a):
        longest = max(len(r["input_ids"]) for r in load_rows(a.data))
        sizes = {"data.max_length": min(2048, longest + len(SEPARATOR) + 1), "data.max_summary_length": 64}
    else:  # real rows: the first N of each split
        sizes = {"data.max_length": a.max_length or 512, "data.max_train_samples": a.train_rows,
                 "data.max_eval_samples": a.val_rows, "data.max_test_samples": a.test_rows}
    return build_config(flags={
        "model.name": str(model_dir), "data.source": str(data_dir), "output_dir": str(out),
        "method.name": a.method, "train.epochs": a.epochs, "train.batch_size": a.batch_size,
        "train.grad_accum": a.grad_accum, "train.precision": a.precision, "train.lr": 1e-4, **sizes,
        "eval.preset": a.decoding, "eval.max_new_tokens": a.max_new_tokens, "eval.batch_size": a.eval_batch_size,
        "eval.min_new_tokens": min(a.max_new_tokens, 55) if a.decoding == "cnndm" else 0,
    }, sets=a.sets)


def measure(a: argparse.Namespace, cfg) -> tuple[dict, dict, dict, float, dict]:
    """(projection, results.json, metrics.json, evaluation wall seconds, the plan's wall seconds and the
    1-minute load average before and after each part: on a shared machine the load moves the times)."""
    from sumtune.recipes.evaluate import evaluate_run
    from sumtune.recipes.experiment import Plan
    from sumtune.recipes.plan import DEFAULT_ARTICLES, DEFAULT_STEPS, run_plan
    from sumtune.recipes.train import train

    a.calibration_steps = DEFAULT_STEPS if a.calibration_steps is None else a.calibration_steps
    a.calibration_articles = DEFAULT_ARTICLES if a.calibration_articles is None else a.calibration_articles
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    record = run_plan(cfg, Plan(chosen=(a.method,)), steps=a.calibration_steps, articles=a.calibration_articles)
    plan_wall = time.perf_counter() - t0
    load.append(os.getloadavg()[0])
    run = train(cfg)
    load.append(os.getloadavg()[0])
    t0 = time.perf_counter()
    metrics = evaluate_run(run, "test", overrides=vars(cfg.eval))
    wall = time.perf_counter() - t0
    load.append(os.getloadavg()[0])
    when = {"plan_wall_seconds": round(plan_wall, 1), "load_average": dict(zip(
        ("start", "after plan", "after train", "after evaluate"), load, strict=True))}
    return record, json.loads((run / "results.json").read_text()), metrics, wall, when


def compare(record: dict, results: dict, metrics: dict, eval_wall: float) -> list[dict]:
    (p,) = record["methods"]
    t = p["training"] or {}
    pairs = [
        ("train_seconds (optimizer steps)", t.get("step_seconds"), results["train_seconds"]),
        ("validation_seconds", t.get("validation_seconds"), results["validation_seconds"]),
        ("evaluation seconds (wall)", p["eval_seconds"], eval_wall),
        ("generation_seconds", p["eval_decode_seconds"], metrics["generation_seconds"]),
        (f"training peak memory MB ({results['peak_memory_kind']})", p["train_peak_memory_mb"],
         results["peak_memory_mb"]),
    ]
    return [{"figure": name, "projected": proj, "measured": meas,
             "error_pct": None if proj is None or not meas else round(100 * (proj / meas - 1), 1)}
            for name, proj, meas in pairs]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True)
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels} (make_token_data.py); with a real "
                    "--model a data source (e.g. a Kaggle CSV directory)")
    ap.add_argument("--model", default=RANDOM_125M,
                    help=f"{RANDOM_125M}, {RANDOM_SMALL} (random weights), or a real model's name or directory")
    ap.add_argument("--max-length", type=int, default=0, help="data.max_length with a real model (default 512)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config keys")
    ap.add_argument("--train-rows", type=int, default=16)
    ap.add_argument("--val-rows", type=int, default=4)
    ap.add_argument("--test-rows", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--decoding", default="greedy", choices=["greedy", "cnndm"])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=2, help="eval.batch_size (rows per decoding batch x beams)")
    ap.add_argument("--calibration-steps", type=int, default=None, help="default: sumtune plan's")
    ap.add_argument("--calibration-articles", type=int, default=None, help="default: sumtune plan's")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--workdir", default=None, help="where the model, data and runs go (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="sumtune-plan-bench-"))
    model_dir, data_dir = stage(a, work) if synthetic(a) else (a.model, a.data)
    out = work / f"run-{a.method}-{time.strftime('%H%M%S')}"
    cfg = config(a, model_dir, data_dir, out)
    record, results, metrics, eval_wall, when = measure(a, cfg)
    rows = compare(record, results, metrics, eval_wall)
    print(f"\n{a.method} on {a.model} ({record['precision']}, {record['device']}): {a.train_rows} train rows, "
          f"{results['steps']} steps of {a.batch_size} x {a.grad_accum}, {a.val_rows} validation rows, "
          f"{metrics['n']} test articles ({metrics['decoding']['label']}, up to {a.max_new_tokens} new tokens); "
          f"calibration {a.calibration_steps} steps, {record['calibration']['articles_decoded']} articles, "
          f"{when['plan_wall_seconds']} s; load average {when['load_average']}")
    print(f"{'figure':48s} {'projected':>12s} {'measured':>12s} {'error':>8s}")
    for r in rows:
        proj = "-" if r["projected"] is None else f"{r['projected']:.2f}"
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%"
        print(f"{r['figure']:48s} {proj:>12s} {r['measured']:12.2f} {err:>8s}")
    result = {"method": a.method, "model": a.model, "precision": record["precision"], "device": record["device"],
              "train_rows": a.train_rows, "steps": results["steps"], "test_articles": metrics["n"],
              "decoding": metrics["decoding"]["label"], "calibration_steps": a.calibration_steps,
              "calibration_articles": record["calibration"]["articles_decoded"], **when, "figures": rows}
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
