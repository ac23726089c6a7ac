"""One row per run for `sumtune compare`: what the run is (method, what trained, seed, lr),
what it cost (time, peak memory and its kind) and how it scored (ROUGE, and BERTScore where
evaluated, with 95% intervals, lengths, n, decoding), read from RUN/results.json and RUN/eval/<split>/;
and its evaluations on other data (RUN/eval/on-<label>/<split>/, `other_evaluations`), listed apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sumtune.bertscore import BERTSCORE_KEYS
from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.fingerprints import data_label
from sumtune.io import read_json
from sumtune.methods import get_method
from sumtune.metrics import ROUGE_KEYS
from sumtune.runs import RunDir, check_finished_run


def _method(cfg):
    return get_method(cfg.method.name)


def _eval_fields(run: Path, split: str) -> dict[str, Any]:
    metrics = RunDir(run).eval_dir(split) / "metrics.json"
    empty = {"evaluated": False, "test_loss": None, "n_test": None, "decoding": None, "ci95": None,
             "mean_prediction_tokens": None, "mean_reference_tokens": None, "eval_data": None,
             "eval_dataset": None, "eval_data_label": None, "eval_on_training_data": None, "sentence_splitter": None,
             "bertscore": None, **dict.fromkeys(ROUGE_KEYS + BERTSCORE_KEYS)}
    if not metrics.is_file():
        return empty
    m = read_json(metrics)
    return {**empty, "evaluated": True, "test_loss": m.get("loss"), "n_test": m.get("n"),
            "decoding": m.get("decoding"), "ci95": m.get("ci95"), "eval_data": m.get("data"),
            "eval_dataset": m.get("dataset"), "eval_data_label": data_label(m["dataset"]) if m.get("dataset") else m.get("data"),
            "eval_on_training_data": m.get("data_is_training_data", True),
            "sentence_splitter": m.get("sentence_splitter"), "bertscore": m.get("bertscore"),
            "mean_prediction_tokens": m.get("mean_prediction_tokens"),
            "mean_reference_tokens": m.get("mean_reference_tokens"),
            **{k: m.get(k) for k in ROUGE_KEYS + BERTSCORE_KEYS}}


def other_evaluations(run: Path, split: str) -> list[dict[str, Any]]:
    """The run's evaluations of `split` on other data than it trained on, by label: per evaluation
    its label (the directory, `runs.other_data_label`), the data (`data_label`), n of the split's
    rows, whether a file was scored whole, loss, ROUGE (and BERTScore) with intervals, decoding."""
    out = []
    for label, directory in RunDir(run).other_evals(split):
        m = read_json(directory / "metrics.json")
        dataset = m.get("dataset") or {}
        out.append({"label": label, "path": str(directory), "data": m.get("data"),
                    "data_label": data_label(dataset) if dataset else m.get("data"),
                    "whole_file": bool(dataset.get("whole_file")), "n": m.get("n"), "split_rows": m.get("split_rows"),
                    "loss": m.get("loss"), "decoding": m.get("decoding"), "ci95": m.get("ci95"),
                    **{k: m.get(k) for k in ROUGE_KEYS + BERTSCORE_KEYS}})
    return out


def run_row(run: Path, split: str = "test", experiment: dict | None = None) -> dict[str, Any]:
    """One table row: the run's results.json and RUN/eval/<split>/metrics.json (None where absent),
    its evaluations on other data under "other_data" (`other_evaluations`);
    `experiment` (OUT/experiment.json) adds the lr sweep's edge and cost for the run's method."""
    check_finished_run(run)
    cfg = load_run_config(run)
    res = read_json(run / "results.json")
    method = cfg.method.name
    trainable, total = res.get("trainable_params"), res.get("total_params")
    epochs, seconds = res.get("epochs_run") or 0, res.get("train_seconds")
    sweep = ((experiment or {}).get("sweep") or {}).get(method) or {}
    m = _method(cfg)
    return {
        "run": run.name, "path": str(run), "method": method, "trained": m.describe(m.options(cfg.method)), "seed": cfg.train.seed,
        "extractive": not m.needs_model,  # a baseline without a model (lead3): no loss, no decoding
        "base_as_is": m.needs_model and not m.trains,  # the base model untrained (zero_shot): what tuning must beat
        "trainable_params": trainable, "total_params": total,
        "trainable_pct": 100.0 * trainable / total if trainable is not None and total else None,
        "train_seconds": seconds, "validation_seconds": res.get("validation_seconds"),
        "seconds_per_epoch": seconds / epochs if seconds is not None and epochs else None,
        "sweep_seconds": sweep.get("seconds"), "lr_edge": sweep.get("edge"),
        "sweep_budget_fraction": ((experiment or {}).get("budget") or {}).get("sweep_fraction") if sweep else None,
        "epochs_run": epochs, "best_step": res.get("best_step"), "early_stopped": res.get("early_stopped"),
        "peak_memory_mb": res.get("peak_memory_mb"), "peak_memory_kind": res.get("peak_memory_kind", "peak RSS"),
        "tokens_per_s": res.get("tokens_per_s"), "precision": res.get("precision"),
        "lr": cfg.train.lr if m.trains else None, "best_val_loss": res.get("best_val_loss"),
        "select_by": res.get("select_by", "loss"), "best_score": res.get("best_score"),
        "model": cfg.model.name, "data": cfg.data.source, "data_sizes": res.get("data_sizes"),
        "train_flops": res.get("train_flops"), "budget": res.get("budget"),  # results.json's (training.budget)
        **_eval_fields(run, split), "other_data": other_evaluations(run, split),
    }


def predictions(run: Path, split: str) -> dict[str, dict[str, float]]:
    """Per-document scores of a run's evaluation: {id: {key: score}}, the ROUGE F1s and, where it was
    scored, BERTScore P/R/F1 (empty when absent or old)."""
    path = RunDir(run).eval_dir(split) / "predictions.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}, line {n}: not valid JSON; the file is damaged, re-run sumtune evaluate") from None
        if all(k in row for k in ROUGE_KEYS):
            out[str(row["id"])] = {k: row[k] for k in ROUGE_KEYS + BERTSCORE_KEYS if k in row}
    return out
