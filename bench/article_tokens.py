#!/usr/bin/env python3
"""Write make_token_data.py's format (JSON lines {input_ids, labels}, labels -100 on the prompt) from
real articles, tokenised as `sumtune train` tokenises them: a real model decodes real text (it stops
at its end of turn, its beams compete as they do in an evaluation), where random ids would not.

    python bench/article_tokens.py --model smollm2-135m-instruct --csv ../shared/data/cnndm/test.csv \
        --n 16 --out /tmp/cnn_tokens.jsonl [--set data.max_length=512 ...]

The data settings are the study's (configs/study_smollm2_cnndm.yaml: the cnndm preset, the chat
format with its instruction, 512 tokens with 96 for the summary) unless a `--set` says otherwise;
the separator format where the tokenizer has no chat template."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "configs" / "study_smollm2_cnndm.yaml"


def main(argv: list[str] | None = None) -> Path:
    from sumtune.config import build_config
    from sumtune.data import clean_article, clean_summary
    from sumtune.data.tokenize import encode_batch
    from sumtune.modeling import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model name or directory (its tokenizer)")
    ap.add_argument("--csv", required=True, help="a CSV with the cnndm preset's columns (article, highlights)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="data.* overrides")
    a = ap.parse_args(argv)
    tokenizer = load_tokenizer(a.model)
    cfg = build_config(str(STUDY), sets=list(a.set)).data
    if cfg.prompt_format == "chat" and not tokenizer.chat_template:
        cfg.prompt_format = "separator"
    with open(a.csv, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(a.n), csv.DictReader(f))]
    clean = cfg.clean
    articles = [clean_article(r[cfg.article_column]) if clean else r[cfg.article_column] for r in rows]
    summaries = [clean_summary(r[cfg.summary_column]) for r in rows]
    enc = encode_batch(tokenizer, articles, summaries, cfg)
    out = Path(a.out)
    out.write_text("".join(json.dumps({"input_ids": i, "labels": y}) + "\n"
                           for i, y in zip(enc["input_ids"], enc["labels"])))
    print(f"wrote {len(rows)} rows to {out} ({cfg.prompt_format} format, max_length {cfg.max_length})")
    return out


if __name__ == "__main__":
    main()
