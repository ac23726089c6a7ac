"""`sumtune evaluate` and `sumtune summarize`: the loss over summary tokens, then summaries
generated for every article (`decoding.summaries`) and their ROUGE against the references (and their
BERTScore with eval.metrics: [rouge, bertscore], `sumtune.bertscore`). A method without a model
(lead3) has no loss (None) and makes its summaries from the articles (`Method.summarize`).

Writes RUN/eval/<split>/predictions.jsonl ({"id", "article", "reference", "prediction",
per-example ROUGE F1 (BERTScore P/R/F1) and token lengths} per line) and then RUN/eval/<split>/metrics.json (means, 95%
bootstrap intervals over documents, n, the decoding settings, the data evaluated; the seconds
of the loss pass and of decoding, and the split's full size `split_rows`, from which the report
projects the cost of evaluating all of it), each atomically; a metrics.json therefore means a complete evaluation.

Other data than the run trained on (by content fingerprint, `dataset_record`) is written beside
the run's own results, never over them: RUN/eval/on-<label>/<split>/ (`RunDir.eval_dir_for`,
`runs.other_data_label`: preset or source name + 8 hex digits of its SHA-256). A single .csv/.jsonl
file given as other data is scored whole, all its rows as the split evaluated (not carved 80/10/10
as a training source is); the record says so ("whole_file": true) and so does the printed line.

How many rows: `limit=None` evaluates what the run's caps select (data.max_eval_samples /
max_test_samples; a whole file: all its rows); `limit=N` the first N rows of the whole split,
whatever those caps were; `limit=0` the whole split.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sumtune.bertscore import BERTSCORE_KEYS, bertscore_per_example, load_scorer
from sumtune.bertscore import record as bertscore_record
from sumtune.bertscore import wanted as wants_bertscore
from sumtune.bootstrap import bootstrap_ci
from sumtune.config import Config, decoding_summary, load_run_config
from sumtune.data import Collator, datasets_cache, load_splits, split_sizes, tokenize_splits
from sumtune.data.sources import check_source
from sumtune.decoding.summaries import article_text, check_text, generate_summaries
from sumtune.distributed import process_state, sum_over_processes
from sumtune.errors import UserError
from sumtune.fastpath import fast_paths_for_decoding, from_config, label_loss_or
from sumtune.fingerprints import data_fingerprint, data_label
from sumtune.io import FULL_DISK, atomic_write_json, atomic_write_text, read_json, writing
from sumtune.lock import DirLock
from sumtune.methods import get_method
from sumtune.metrics import ROUGE_KEYS, rouge_per_example
from sumtune.modeling import autocast_dtype, load_tokenizer, resolve_precision
from sumtune.runs import RunDir, check_finished_run, load_run, with_overrides
from sumtune.sentences import SPLITTER
from sumtune.training.step import token_loss_sum
from sumtune.training.validation import summed_loss

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000


def _config(run: Path, overrides: dict[str, Any] | None, data: str | None = None,
            data_preset: str | None = None) -> Config:
    """The run's configuration with the decoding overrides (eval.*) applied; `data` replaces
    the data source and `data_preset` sets another dataset's columns, cleaning and decoding
    (evaluating on other data is allowed and recorded)."""
    return with_overrides(load_run_config(run), overrides, data, data_preset)


def _model(run: Path, cfg: Config, base_model: str | None = None, device: torch.device | None = None,
           base: torch.nn.Module | None = None):
    """(model on the device, tokenizer, autocast dtype or None); `base_model` loads the run onto
    another copy of its base model (the fingerprint check refuses a different one); `device`:
    this process's under `accelerate launch`; `base`: the base model already loaded (`load_run`)."""
    _cfg, method, model, tokenizer = load_run(run, base_model=base_model, base=base)
    if not method.not_exportable and cfg.method.quantize == "none":
        # an adapter (LoRA, DoRA, IA³) merged into the base weights: each step one matmul per layer, not
        # two more; equal to the unmerged model up to rounding (tested). QLoRA's 4-bit base stays unmerged.
        model = method.merged(model)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    autocast = autocast_dtype(resolve_precision(cfg.train.precision, device))
    fast_paths_for_decoding(model, cfg, autocast)  # fastpath/: each logged
    return model, tokenizer, autocast


def precision_name(autocast: torch.dtype | None) -> str:
    """The precision decoding ran in, as metrics.json records it (the model card states it): the
    autocast dtype over the fp32 weights, or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "fp32")


@torch.inference_mode()
def summary_loss(model, rows, pad_id: int, batch_size: int, autocast: torch.dtype | None, state=None,
                 fast: bool | Collection[str] = True) -> float:
    """Token-weighted mean cross-entropy over the summary tokens of tokenised rows (input_ids,
    labels), through the same loop as validation (`training.validation.summed_loss`); with
    `state` (several processes) each scores its batches and the sums are added. With the
    `label_loss` fast path enabled (`fast`: `fastpath.from_config`), the LM head runs at the
    summary positions only, row by row on a CPU: a batch never holds [rows, length, vocab] logits,
    so eval.batch_size sizes decoding without a memory cliff here (equal to the full-logits loss, tested)."""
    device = next(model.parameters()).device
    loss_fn = label_loss_or(token_loss_sum, fast)

    def ctx():
        return torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)

    shard = (state.process_index, state.num_processes) if state is not None else (0, 1)
    total = summed_loss(model, rows, Collator(pad_id), batch_size, loss_fn, ctx, device, shard).tolist()
    loss_sum, n = sum_over_processes(total, state) if state is not None else total
    if not n:
        raise UserError("no summary tokens were scored: every row's summary was cut away; raise data.max_length")
    return loss_sum / n


def _split_rows(cfg: Config, split: str, limit: int | None, whole_file: bool = False):
    """The rows to evaluate: the run's caps when `limit` is None, else the first `limit` rows
    of the uncapped split (0 = all of it); only `split` is read (a directory needs only its file).
    `whole_file`: a single file's every row is the split, uncapped (`limit` still cuts it)."""
    capped = limit is None and not whole_file
    data = cfg.data if capped else replace(cfg.data, max_eval_samples=0, max_test_samples=0)
    splits = load_splits(data, cfg.data.seed, only=split, whole_file=whole_file)
    if split not in splits:
        raise UserError(f"data {cfg.data.source} has no '{split}' split (it has {', '.join(splits)})")
    ds = splits[split]
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _scores(predictions: list[str], references: list[str], tokenizer, seed: int, scorer=None,
            device: torch.device | None = None) -> tuple[dict, dict]:
    """(metrics: means, intervals, lengths; per-example columns for predictions.jsonl); with `scorer`
    (bertscore.load_scorer) BERTScore too, its intervals from the same bootstrap as ROUGE's."""
    per = rouge_per_example(predictions, references)
    if scorer is not None:
        t0 = time.perf_counter()
        per |= bertscore_per_example(scorer, predictions, references, device or "cpu")
        bert_seconds = time.perf_counter() - t0
    pred_len = [len(tokenizer(p).input_ids) for p in predictions]
    ref_len = [len(tokenizer(r).input_ids) for r in references]
    metrics: dict[str, Any] = {k: sum(v) / len(v) for k, v in per.items()}
    metrics["ci95"] = {k: list(bootstrap_ci(v, BOOTSTRAP_RESAMPLES, seed)) for k, v in per.items()}
    metrics["bootstrap"] = {"resamples": BOOTSTRAP_RESAMPLES, "seed": seed, "level": 0.95,
                            "method": "percentile, documents resampled"}
    metrics["sentence_splitter"] = SPLITTER
    if scorer is not None:
        metrics["bertscore"] = {**bertscore_record(scorer), "seconds": bert_seconds}
    metrics["mean_prediction_tokens"] = sum(pred_len) / len(pred_len)
    metrics["mean_reference_tokens"] = sum(ref_len) / len(ref_len)
    columns = {**per, "prediction_tokens": pred_len, "reference_tokens": ref_len}
    return metrics, columns


def evaluate_run(run_dir: str | Path, split: str = "test", limit: int | None = None,
                 overrides: dict[str, Any] | None = None, data: str | None = None,
                 base_model: str | None = None, data_preset: str | None = None) -> dict[str, Any]:
    """Loss, generated summaries and ROUGE (with intervals) of a finished run on `split`; returns
    the metrics written. `data`/`base_model` override the run's data source and model path,
    `data_preset` its dataset preset (`with_overrides`); metrics.json records the dataset, and other
    data than the run's own goes to RUN/eval/on-<label>/<split>/ (module docstring).
    One writer per evaluation directory: a second evaluation of it is refused at once. Under
    `accelerate launch` the articles are shared out over the processes (`sumtune.distributed`)
    and the main process writes what one process would."""
    run = check_finished_run(run_dir)
    state = process_state()
    cfg = _config(run, overrides, data, data_preset)
    check_source(cfg.data, split)  # a missing file or split in one line, before its fingerprint is taken
    with state.main_process_first():  # the main process fills the datasets cache (a Hub source's fingerprint)
        dataset = dataset_record(cfg, run)
    source = Path(cfg.data.source).expanduser()
    if ((data is not None or data_preset is not None) and not dataset["is_training_data"]
            and not cfg.data.source.startswith("hf:") and source.is_file()):
        dataset["whole_file"] = True  # a file given to score: all of it, not the test tenth of a training split
    out = RunDir(run).eval_dir_for(split, dataset)  # other data beside the run's own results, never over them
    with DirLock(out, "evaluation directory"):  # the main process's
        return _evaluate(run, split, limit, cfg, base_model, state, dataset, out)


def decoding_record(cfg: Config) -> dict[str, Any]:
    """What made a run's summaries, as metrics.json records it: the decoding settings, or for a method
    without a model (lead3) its rule, labelled "extractive"."""
    method = get_method(cfg.method.name)
    if method.needs_model:
        return decoding_summary(cfg.eval)
    return {"label": "extractive", "rule": method.describe(method.options(cfg.method))}


def dataset_record(cfg: Config, run: Path) -> dict[str, Any]:
    """Which data a test figure is on: source, dataset preset, content fingerprint, columns, and
    whether it is the data the run trained on (same content fingerprint; same source where a
    fingerprint is missing). `evaluate_run` adds "whole_file": true when a single file was scored whole."""
    sha = data_fingerprint(cfg.data).get("sha256")
    trained = (read_json(RunDir(run).results).get("data") or {}) if RunDir(run).results.is_file() else {}
    trained_sha = (trained.get("fingerprint") or {}).get("sha256")
    same = sha == trained_sha if sha and trained_sha else cfg.data.source == load_run_config(run).data.source
    d = cfg.data
    return {"source": d.source, "preset": d.preset, "sha256": sha, "clean": d.clean,
            "columns": {"article": d.article_column, "summary": d.summary_column, "id": d.id_column},
            "is_training_data": same}


def _evaluate(run: Path, split: str, limit: int | None, cfg: Config, base_model: str | None, state,
              dataset: dict[str, Any], out: Path) -> dict[str, Any]:
    from datasets import DatasetDict  # late: datasets (0.6 s to import) only when rows are tokenized

    whole = bool(dataset.get("whole_file"))
    with state.main_process_first():  # the main process fills the datasets cache, the others read it
        ds = _split_rows(cfg, split, limit, whole)  # data problems show before the model loads
        split_rows = split_sizes(cfg.data, cfg.data.seed, split, whole)[split]  # what a full evaluation would cover
        # every process scores all documents (no process waits on another); before decoding, to fail early
        scorer = load_scorer(cfg.eval) if wants_bertscore(cfg.eval) else None
    if whole and state.is_main_process:
        first = f" (the first {len(ds)} scored: --limit {limit})" if limit and len(ds) < split_rows else ""
        print(f"{run}: evaluating on all {split_rows} rows of {cfg.data.source} as the {split} split{first}")
    method = get_method(cfg.method.name)
    precision = None  # no model, no precision (lead3)
    if method.needs_model:
        model, tokenizer, autocast = _model(run, cfg, base_model, state.device)
        precision = precision_name(autocast)
        with state.main_process_first(), writing(datasets_cache(), only=FULL_DISK):
            tokenised = tokenize_splits(DatasetDict({split: ds}), tokenizer, cfg.data)[split]
        t0 = time.perf_counter()
        loss = summary_loss(model, tokenised, tokenizer.pad_token_id, cfg.eval.batch_size, autocast, state,
                            from_config(cfg.train))
        loss_seconds = time.perf_counter() - t0
        predictions, seconds = generate_summaries(model, tokenizer, cfg, autocast, list(ds["article"]), True, state)
    else:  # no model (lead3): no loss; the summaries come from the articles alone
        tokenizer = load_tokenizer(base_model or cfg.model.name)  # the lengths in the run's tokens, as the others'
        loss = loss_seconds = None
        t0 = time.perf_counter()
        predictions = method.summarize(list(ds["article"]), method.options(cfg.method))
        seconds = time.perf_counter() - t0
    references = list(ds["summary"])
    scores, columns = _scores(predictions, references, tokenizer, cfg.train.seed, scorer, state.device)
    metrics: dict[str, Any] = {
        "split": split, "loss": loss, **scores, "n": len(predictions), "limit": limit,
        "generation_seconds": seconds, "summaries_per_s": len(predictions) / seconds,
        "loss_seconds": loss_seconds, "split_rows": split_rows, "processes": state.num_processes,
        "decoding": decoding_record(cfg), "data": cfg.data.source, "dataset": dataset,
        "data_is_training_data": dataset["is_training_data"], "precision": precision,
    }
    if not state.is_main_process:
        return metrics
    rows = ({"id": i, "article": a, "reference": r, "prediction": p, **{k: v[j] for k, v in columns.items()}}
            for j, (i, a, r, p) in enumerate(zip(ds["id"], ds["article"], references, predictions)))
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    atomic_write_json(out / "metrics.json", metrics)
    scores_line = "  ".join(f"{k} {100 * metrics[k]:.2f} [{100 * metrics['ci95'][k][0]:.2f}, "
                            f"{100 * metrics['ci95'][k][1]:.2f}]" for k in ROUGE_KEYS + BERTSCORE_KEYS if k in metrics)
    on = "" if dataset["is_training_data"] else f", on {data_label(dataset)}"
    loss_text = "-" if loss is None else f"{loss:.4f}"
    print(f"{run} [{split}{on}, n={len(predictions)}, {metrics['decoding']['label']}]: loss {loss_text}  {scores_line}  "
          f"({metrics['summaries_per_s']:.2f} summaries/s)")
    own = RunDir(run).eval_dir(split)
    beside = ("" if dataset["is_training_data"] else
              f" (beside the run's own {split} results in {own}, left as they were)" if (own / "metrics.json").is_file()
              else f" (other data: the run's own {split} results go to {own})")
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}{beside}")
    return metrics


def read_text(file_or_dash: str) -> str:
    """An article from a file or standard input ("-"), strictly UTF-8, not empty."""
    where = "standard input" if file_or_dash == "-" else file_or_dash
    if file_or_dash == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        path = Path(file_or_dash)
        if not path.is_file():
            raise UserError(f"input file not found: {path}; pass a text file or - for standard input")
        raw = path.read_bytes()
    return check_text(raw, where)


def summarize_text(run_dir: str | Path, text: str, overrides: dict[str, Any] | None = None,
                   base_model: str | None = None, precision: str | None = None) -> str:
    """The summary of one article by a finished run, cleaned and truncated as in training; `precision`
    (auto, bf16, fp16, fp32) decodes in another precision than the run's `train.precision`."""
    run = check_finished_run(run_dir)
    cfg = _config(run, overrides)
    if precision is not None:
        cfg.train.precision = precision
    method = get_method(cfg.method.name)
    if not method.needs_model:  # lead3: from the article alone
        return method.summarize([article_text(text, cfg)], method.options(cfg.method))[0]
    model, tokenizer, autocast = _model(run, cfg, base_model)
    return generate_summaries(model, tokenizer, cfg, autocast, [article_text(text, cfg)], progress=False)[0][0]


def summarize_file(run_dir: str | Path, file_or_dash: str = "-", overrides: dict[str, Any] | None = None,
                   base_model: str | None = None, precision: str | None = None) -> str:
    """The summary of one text (a file, or stdin for "-")."""
    check_finished_run(run_dir)
    return summarize_text(run_dir, read_text(file_or_dash), overrides, base_model, precision)
