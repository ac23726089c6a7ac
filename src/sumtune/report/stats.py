"""Across runs: mean ± sd over seeds per method, and paired bootstrap tests between methods.

Methods are compared on the documents they were all evaluated on (matched by dataset and id). A method
trained with several seeds enters with its per-document score averaged over its seeds, so a
difference is between methods, not between two lucky seeds. Each pair's p-value is the
paired bootstrap's (bootstrap.paired_bootstrap, documents resampled, the same resamples for
every pair); significance is judged after Holm's correction over all pairs of one metric,
since a report with many pairs would otherwise find some "significant" by chance.

BERTScore F1, where the runs were scored with it, is tested the same way beside the ROUGE keys,
but only when every run that has it used one BERTScore setting (model, layer, rescaling): scores
of two models are not on one scale.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from sumtune.bertscore import BERTSCORE_KEYS
from sumtune.bootstrap import paired_bootstrap
from sumtune.metrics import ROUGE_KEYS
from sumtune.report.rows import predictions

RESAMPLES = 1000
LEVEL = 0.05
BERTSCORE_TESTED = "bertscore_f1"
TESTED_KEYS = (*ROUGE_KEYS, BERTSCORE_TESTED)


def bertscore_setting(row: dict) -> tuple | None:
    """(model, layer, rescaled) of a row's BERTScore, None where it has none."""
    b = row.get("bertscore") if row.get(BERTSCORE_TESTED) is not None else None
    return (b["model"], b["num_layers"], b["rescaled_with_baseline"]) if b else None


def bertscore_settings(rows: Sequence[dict]) -> list[tuple]:
    """The distinct BERTScore settings of the evaluated rows."""
    return sorted({s for r in rows if r.get("evaluated") and (s := bertscore_setting(r))}, key=str)


def seed_summary(rows: Sequence[dict]) -> list[dict]:
    """Per method with more than one evaluated run: n seeds, mean and sd of each ROUGE (of BERTScore
    F1 where every run has it) and of the best validation loss."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["evaluated"]:
            by_method[r["method"]].append(r)
    out = []
    for method, runs in by_method.items():
        if len(runs) < 2:
            continue
        entry = {"method": method, "seeds": [r["seed"] for r in runs], "n_seeds": len(runs)}
        bert = (BERTSCORE_TESTED,) if all(r.get(BERTSCORE_TESTED) is not None for r in runs) else ()
        for key in (*ROUGE_KEYS, *bert, "best_val_loss"):
            values = [r[key] for r in runs if r[key] is not None]
            entry[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0} \
                if values else None  # no loss: a method without a model (lead3)
        out.append(entry)
    return out


def _method_scores(rows: Sequence[dict], runs: Sequence[Path], split: str) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {doc id: {key: score averaged over the method's runs}}}, documents all its runs scored,
    keys all its runs have for them."""
    per_run: dict[str, list[dict]] = defaultdict(list)
    for row, run in zip(rows, runs):
        if row["evaluated"]:
            data = (row.get("eval_dataset") or {}).get("sha256") or row.get("eval_data")
            scores = {f"{data}/{i}": v for i, v in predictions(run, split).items()}  # no pair across datasets
            if scores:
                per_run[row["method"]].append(scores)
    out = {}
    for method, runs_scores in per_run.items():
        ids = set.intersection(*(set(s) for s in runs_scores))
        keys = [k for k in (*ROUGE_KEYS, *BERTSCORE_KEYS) if all(k in s[i] for s in runs_scores for i in ids)]
        out[method] = {i: {k: statistics.fmean(s[i][k] for s in runs_scores) for k in keys} for i in ids}
    return out


def _holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pairwise(rows: Sequence[dict], runs: Sequence[Path], split: str, seed: int = 0) -> list[dict]:
    """For every pair of methods: per ROUGE key (and BERTScore F1 where both have it, module
    docstring) the mean difference (first - second) on their common documents, its 95% interval,
    p-value, Holm-adjusted p-value and significance."""
    scores = _method_scores(rows, runs, split)
    keys = TESTED_KEYS if len(bertscore_settings(rows)) == 1 else ROUGE_KEYS
    pairs = []
    for a, b in combinations(list(scores), 2):
        ids = sorted(set(scores[a]) & set(scores[b]))
        if len(ids) < 2:
            continue
        entry = {"a": a, "b": b, "n": len(ids)}
        for key in keys:
            if all(key in scores[m][i] for m in (a, b) for i in ids):
                entry[key] = paired_bootstrap([scores[a][i][key] for i in ids], [scores[b][i][key] for i in ids],
                                              RESAMPLES, seed)
        pairs.append(entry)
    for key in keys:
        tested = [e for e in pairs if key in e]
        for entry, p in zip(tested, _holm([e[key]["p_value"] for e in tested])):
            entry[key]["p_holm"] = p
            entry[key]["significant"] = p < LEVEL
    return pairs
