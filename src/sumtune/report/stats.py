"""Across runs: mean ± sd over seeds per method, and paired bootstrap tests between methods.

Methods are compared on the documents they were all evaluated on (matched by dataset and id). A method
trained with several seeds enters with its per-document score averaged over its seeds, so a
difference is between methods, not between two lucky seeds. Each pair's p-value is the
paired bootstrap's (bootstrap.paired_bootstrap, documents resampled, the same resamples for
every pair); significance is judged after Holm's correction over all pairs of one metric,
since a report with many pairs would otherwise find some "significant" by chance.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from sumtune.bootstrap import paired_bootstrap
from sumtune.metrics import ROUGE_KEYS
from sumtune.report.rows import predictions

RESAMPLES = 1000
LEVEL = 0.05


def seed_summary(rows: Sequence[dict]) -> list[dict]:
    """Per method with more than one evaluated run: n seeds, mean and sd of each ROUGE and of
    the best validation loss."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["evaluated"]:
            by_method[r["method"]].append(r)
    out = []
    for method, runs in by_method.items():
        if len(runs) < 2:
            continue
        entry = {"method": method, "seeds": [r["seed"] for r in runs], "n_seeds": len(runs)}
        for key in (*ROUGE_KEYS, "best_val_loss"):
            values = [r[key] for r in runs if r[key] is not None]
            entry[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        out.append(entry)
    return out


def _method_scores(rows: Sequence[dict], runs: Sequence[Path], split: str) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {doc id: {key: F1 averaged over the method's runs}}}, documents all its runs scored."""
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
        out[method] = {i: {k: statistics.fmean(s[i][k] for s in runs_scores) for k in ROUGE_KEYS} for i in ids}
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
    """For every pair of methods: per ROUGE key the mean difference (first - second) on their
    common documents, its 95% interval, p-value, Holm-adjusted p-value and significance."""
    scores = _method_scores(rows, runs, split)
    pairs = []
    for a, b in combinations(list(scores), 2):
        ids = sorted(set(scores[a]) & set(scores[b]))
        if len(ids) < 2:
            continue
        entry = {"a": a, "b": b, "n": len(ids)}
        for key in ROUGE_KEYS:
            entry[key] = paired_bootstrap([scores[a][i][key] for i in ids], [scores[b][i][key] for i in ids],
                                          RESAMPLES, seed)
        pairs.append(entry)
    for key in ROUGE_KEYS:
        for entry, p in zip(pairs, _holm([e[key]["p_value"] for e in pairs])):
            entry[key]["p_holm"] = p
            entry[key]["significant"] = p < LEVEL
    return pairs
