#!/usr/bin/env python3
"""Projected cost of the full study from the benchmarks' own JSON lines (one machine, one run each):

    python bench/study_cost.py --throughput LORA.json PROMPT.json LAST.json --generate GEN.json
        [--config configs/cnndm_21k.yaml] [--rows 21000] [--row-tokens N] [--test-articles 11490]

Training hours per method = rows x row tokens x epochs / the bench's median sumtune tokens/s (for
last_layers: its first epoch at that rate, times the bench's measured all-epochs-over-first ratio,
scaled to the configured epochs: the feature cache makes later epochs cheaper). Epochs: the config's
`train.epochs` (early stopping may stop sooner: an upper bound in epochs). Row tokens: the bench
rows' mean unless --row-tokens (CNN/DM rows are longer; attention makes a longer token dearer, so
a longer row's projection from a shorter row's rate is low). Decoding hours = test articles / the
bench's summaries/s. Validation passes and evaluation ROUGE are not counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def last_json(path: str) -> dict:
    lines = [x for x in Path(path).read_text().splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON line (the output of a benchmark run with --json)")
    return json.loads(lines[-1])


def training_hours(r: dict, rows: int, row_tokens: float, epochs: int) -> float:
    first_epoch_s = rows * row_tokens / r["sumtune_tokens_per_s"]
    if r["method"] != "last_layers" or "epochs_over_first" not in r:
        return first_epoch_s * epochs / 3600
    # the bench measured r["epochs"] epochs = epochs_over_first x the first; later epochs cost alike
    later = (r["epochs_over_first"] - 1) / (r["epochs"] - 1) if r["epochs"] > 1 else 1.0
    return first_epoch_s * (1 + later * (epochs - 1)) / 3600


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", nargs="+", required=True, help="bench/throughput.py --json outputs")
    ap.add_argument("--generate", required=True, help="a bench/generate.py --json output")
    ap.add_argument("--config", default="configs/cnndm_21k.yaml")
    ap.add_argument("--rows", type=int, default=21000)
    ap.add_argument("--row-tokens", type=float, default=None)
    ap.add_argument("--test-articles", type=int, default=11490)
    a = ap.parse_args(argv)
    epochs = int(yaml.safe_load(Path(a.config).read_text())["train"]["epochs"])
    out: dict = {"rows": a.rows, "epochs": epochs, "test_articles": a.test_articles, "train_hours": {}}
    for path in a.throughput:
        r = last_json(path)
        tokens = a.row_tokens or r["mean_row_tokens"]
        out["row_tokens"] = tokens
        out["train_hours"][r["method"]] = round(training_hours(r, a.rows, tokens, epochs), 1)
        print(f"{r['method']}: {r['sumtune_tokens_per_s']} tokens/s ({r['precision']}) -> "
              f"{out['train_hours'][r['method']]} h for {a.rows} rows x {tokens} tokens x {epochs} epochs")
    g = last_json(a.generate)
    out["decode_hours"] = round(a.test_articles / g["sumtune_summaries_per_s"] / 3600, 1)
    out["decoding"] = {k: g.get(k) for k in ("decoding", "num_beams", "max_new_tokens", "batch_size", "precision")}
    print(f"decoding: {g['sumtune_summaries_per_s']} summaries/s ({out['decoding']}) -> {out['decode_hours']} h "
          f"for {a.test_articles} articles")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
