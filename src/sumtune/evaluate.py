"""`sumtune evaluate` and `sumtune summarize`: the loss over summary tokens, then summaries
generated for every article (generate.py) and their ROUGE against the references.

Writes RUN/eval/<split>/predictions.jsonl ({"id", "reference", "prediction"} per line) and
then RUN/eval/<split>/metrics.json, each atomically; a metrics.json therefore means a
complete evaluation.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sumtune.checkpoint import atomic_write_json, atomic_write_text, read_json
from sumtune.config import Config, load_run_config, set_keys, validate
from sumtune.errors import UserError
from sumtune.generate import Generator, decode_summary
from sumtune.metrics import ROUGE_KEYS, TokenLoss, rouge, summed_token_loss

log = logging.getLogger(__name__)


def check_finished_run(run_dir: str | Path) -> Path:
    """The run directory, if it is a finished run with weights; else a one-line error saying what it is."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a sumtune run directory (no config.yaml); pass the --output-dir of a train run")
    results = run / "results.json"
    if not results.is_file() or read_json(results).get("finished") is not True:
        raise UserError(
            f"{run} is an unfinished run (its results.json does not say finished); finish it with "
            f"`sumtune train <the same options> --output-dir {run} --resume`"
        )
    if not (run / "adapter").is_dir():
        raise UserError(f"{run} has no weights (no adapter/ directory); retrain it with `sumtune train`")
    return run


def _config(run: Path, overrides: dict[str, Any] | None) -> Config:
    """The run's configuration with the decoding overrides (eval.*) applied."""
    cfg = load_run_config(run)
    set_keys(cfg, [(f"eval.{key}", value) for key, value in (overrides or {}).items()])  # preset first
    return validate(cfg)


def _model(run: Path, cfg: Config):
    """(model on the device, tokenizer, autocast dtype or None)."""
    from sumtune.fastpath import speed_up
    from sumtune.modeling import autocast_dtype, resolve_precision
    from sumtune.runs import load_run

    _cfg, _method, model, tokenizer = load_run(run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    autocast = autocast_dtype(resolve_precision(cfg.train.precision, device))
    speed_up(model, cfg.train.fast, cfg.model.attention, autocast, inference=True)  # fastpath/
    return model, tokenizer, autocast


@torch.inference_mode()
def summary_loss(model, rows, pad_id: int, batch_size: int, autocast: torch.dtype | None) -> float:
    """Token-weighted mean cross-entropy over the summary tokens of tokenised rows (input_ids, labels)."""
    from sumtune.data import Collator

    device = next(model.parameters()).device
    collate = Collator(pad_id)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    meter = TokenLoss()
    for start in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[start : start + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        ctx = torch.autocast(device.type, dtype=autocast) if autocast else torch.autocast(device.type, enabled=False)
        with ctx:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        meter.add(*summed_token_loss(logits, batch["labels"]))
    return meter.mean


def _split_rows(cfg: Config, split: str, limit: int | None):
    from sumtune.data import load_splits

    splits = load_splits(cfg.data, cfg.train.seed)
    if split not in splits:
        raise UserError(f"data {cfg.data.source} has no '{split}' split (it has {', '.join(splits)})")
    ds = splits[split]
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def evaluate_run(run_dir: str | Path, split: str = "test", limit: int | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loss, generated summaries and ROUGE of a finished run on `split`; returns the metrics written."""
    from datasets import DatasetDict

    from sumtune.data import encode_prompt, tokenize_splits

    run = check_finished_run(run_dir)
    cfg = _config(run, overrides)
    ds = _split_rows(cfg, split, limit)  # data problems show before the model loads
    model, tokenizer, autocast = _model(run, cfg)
    tokenised = tokenize_splits(DatasetDict({split: ds}), tokenizer, cfg.data)[split]
    loss = summary_loss(model, tokenised, tokenizer.pad_token_id, cfg.eval.batch_size, autocast)

    prompts = [encode_prompt(tokenizer, a, cfg.data) for a in ds["article"]]
    generator = Generator(model, tokenizer, cfg.eval, autocast=autocast)
    t0 = time.perf_counter()
    generated = generator.generate(prompts, progress=True)
    seconds = time.perf_counter() - t0
    predictions = [decode_summary(tokenizer, g, cfg.data.separator) for g in generated]
    references = list(ds["summary"])

    metrics: dict[str, Any] = {
        "split": split, "loss": loss, **rouge(predictions, references), "n": len(predictions),
        "limit": limit or 0, "generation_seconds": seconds, "summaries_per_s": len(predictions) / seconds,
        "generated_tokens": sum(len(g) for g in generated), "decoding": asdict(cfg.eval),
    }
    out = run / "eval" / split
    lines = (json.dumps({"id": i, "reference": r, "prediction": p}, ensure_ascii=False)
             for i, r, p in zip(ds["id"], references, predictions))
    atomic_write_text(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_json(out / "metrics.json", metrics)
    scores = "  ".join(f"{k} {100 * metrics[k]:.2f}" for k in ROUGE_KEYS)
    print(f"{run} [{split}, n={len(predictions)}]: loss {loss:.4f}  {scores}  "
          f"({metrics['summaries_per_s']:.2f} summaries/s)")
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")
    return metrics


def _read_text(file_or_dash: str) -> str:
    if file_or_dash == "-":
        return sys.stdin.read()
    path = Path(file_or_dash)
    if not path.is_file():
        raise UserError(f"input file not found: {path}; pass a text file or - for standard input")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); re-encode it as UTF-8") from None


def summarize_file(run_dir: str | Path, file_or_dash: str = "-", overrides: dict[str, Any] | None = None) -> str:
    """The summary of one text (a file, or stdin for "-"), cleaned and truncated as in training."""
    from sumtune.data import clean_article, encode_prompt

    run = check_finished_run(run_dir)
    text = _read_text(file_or_dash)
    if not text.strip():
        where = "standard input" if file_or_dash == "-" else file_or_dash
        raise UserError(f"empty input text ({where}); pass an article to summarise")
    cfg = _config(run, overrides)
    model, tokenizer, autocast = _model(run, cfg)
    article = clean_article(text) if cfg.data.clean else text.strip()
    prompt = encode_prompt(tokenizer, article, cfg.data)
    ids = Generator(model, tokenizer, cfg.eval, autocast=autocast).generate([prompt])[0]
    return decode_summary(tokenizer, ids, cfg.data.separator)
