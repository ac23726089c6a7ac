"""The PNG plots of `sumtune compare`: loss curves, ROUGE bars with 95% intervals, trainable
parameters vs ROUGE-L, the cost-quality frontier (frontier_plot.py) and (when a run selected by
ROUGE, train.select_by) the validation ROUGE curves with their intervals."""

from __future__ import annotations

import io as stdio
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sumtune.config import decoding_summary, load_run_config
from sumtune.errors import UserError
from sumtune.io import atomic_write_bytes
from sumtune.metrics import ROUGE_KEYS
from sumtune.report.frontier_plot import frontier_figure

PLOTS = {"loss": "loss_curves.png", "rouge": "rouge_bars.png", "params": "params_vs_rougeL.png",
         "frontier": "frontier.png", "select": "val_rouge_curves.png"}


def _events(run: Path) -> list[dict]:
    """RUN/metrics.jsonl's events (none when it is absent)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}, line {n}: not valid JSON; the file is damaged") from None
    return events


def loss_curves(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per epoch: the mean of the logged training losses, and the validation loss (the epoch's last)."""
    train: dict[int, list[float]] = defaultdict(list)
    val: dict[int, float] = {}
    for ev in _events(run):
        if "loss" not in ev or "epoch" not in ev or not math.isfinite(ev["loss"]):
            continue
        epoch = math.ceil(ev["epoch"])  # logged as fractional progress: (0, 1] is epoch 1
        if ev.get("split") == "train":
            train[epoch].append(ev["loss"])
        elif ev.get("split") == "validation":
            val[epoch] = ev["loss"]
    return {e: sum(v) / len(v) for e, v in sorted(train.items())}, dict(sorted(val.items()))


def rouge_curve(run: Path, key: str) -> list[dict]:
    """The validation events that recorded ROUGE `key` (train.select_by), in order."""
    return [ev for ev in _events(run) if ev.get("split") == "validation" and key in ev and "select_n" in ev]


def plots(rows: Sequence[dict], runs: Sequence[Path], out: Path, split: str = "test") -> list[Path]:
    """Write the plots into `out` (the validation ROUGE curves only when a run recorded them);
    returns their paths."""
    import matplotlib  # late: matplotlib (0.7 s to import) only when plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # late: likewise, after choosing the file backend

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {row["run"]: colors[i % len(colors)] for i, row in enumerate(rows)}
    evaluated = [r for r in rows if r["evaluated"]]
    written = [_save(_loss_plot(plt, rows, runs, color), out / PLOTS["loss"]),
               _save(_rouge_plot(plt, evaluated, split), out / PLOTS["rouge"]),
               _save(_params_plot(plt, evaluated, color), out / PLOTS["params"]),
               _save(frontier_figure(plt, rows, split, color), out / PLOTS["frontier"])]
    curves = [(row, curve) for row, run in zip(rows, runs)
              if row.get("select_by", "loss") != "loss" and (curve := rouge_curve(run, row["select_by"]))]
    if curves:
        written.insert(1, _save(_select_plot(plt, curves, runs, rows, color), out / PLOTS["select"]))
    return written


def _loss_plot(plt, rows: Sequence[dict], runs: Sequence[Path], color: dict[str, str]):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, run in zip(rows, runs):
        train, val = loss_curves(run)
        c = color[row["run"]]
        if train:
            ax.plot(list(train), list(train.values()), "-o", color=c, ms=3, label=f"{row['run']} train")
        if val:
            ax.plot(list(val), list(val.values()), "--s", color=c, ms=3, label=f"{row['run']} validation")
        elif row["best_val_loss"] is not None:  # nothing trained (zero_shot): its loss as a baseline
            ax.axhline(row["best_val_loss"], ls=":", color="gray", label=f"{row['run']} validation (no training)")
    ax.set(xlabel="epoch", ylabel="loss (summary tokens)", title="Training and validation loss per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    return fig


def _select_plot(plt, curves: Sequence[tuple[dict, list[dict]]], runs: Sequence[Path], rows: Sequence[dict],
                 color: dict[str, str]):
    """Per run that selected by ROUGE: its selection score at each validation with the 95%
    bootstrap interval over the subset's documents, the kept step starred."""
    path = {row["run"]: run for row, run in zip(rows, runs)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, curve in curves:
        key, c = row["select_by"], color[row["run"]]
        steps = [ev["step"] for ev in curve]
        values = [100 * ev[key] for ev in curve]
        cis = [(ev.get("ci95") or {}).get(key) for ev in curve]
        if all(cis):
            ax.fill_between(steps, [100 * ci[0] for ci in cis], [100 * ci[1] for ci in cis], color=c, alpha=0.15)
        label = decoding_summary(load_run_config(path[row["run"]]).eval)["label"]
        ns = sorted({ev["select_n"] for ev in curve})
        ax.plot(steps, values, "-o", color=c, ms=3,
                label=f"{row['run']} {key} (n={', '.join(map(str, ns))}, {label})")
        best = [(s, v) for s, v in zip(steps, values) if s == row.get("best_step")]
        if best:
            ax.plot(*best[0], "*", color=c, ms=12, label=f"{row['run']} kept (step {best[0][0]})")
    ax.set(xlabel="optimizer step", ylabel="F1 (%), shaded: 95% bootstrap interval",
           title="Validation ROUGE used for selection (first eval.select_samples rows)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return fig


def _rouge_plot(plt, evaluated: Sequence[dict], split: str):
    """Grouped bars per run, each ROUGE with its 95% bootstrap interval."""
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(evaluated)), 4.5))
    width = 0.8 / len(ROUGE_KEYS)
    for j, key in enumerate(ROUGE_KEYS):
        xs = [i + (j - 1.5) * width for i in range(len(evaluated))]
        values = [100 * r[key] for r in evaluated]
        cis = [(r.get("ci95") or {}).get(key) for r in evaluated]
        err = [[v - 100 * c[0] if c else 0 for v, c in zip(values, cis)],
               [100 * c[1] - v if c else 0 for v, c in zip(values, cis)]]
        bars = ax.bar(xs, values, width, label=key, yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    many = len(evaluated) > 4  # long run names would overlap side by side
    ax.set_xticks(range(len(evaluated)), [r["run"] for r in evaluated], rotation=30 if many else 0,
                  ha="right" if many else "center")
    ax.set(ylabel="F1 (%), 95% bootstrap interval", title=f"ROUGE on the {split} split")
    if not evaluated:
        ax.text(0.5, 0.5, "no run evaluated yet (sumtune evaluate RUN)", ha="center", transform=ax.transAxes)
    else:
        tops = [100 * ((r.get("ci95") or {}).get(k) or (0, r[k]))[1] for r in evaluated for k in ROUGE_KEYS]
        ax.set_ylim(0, 1.25 * max(tops) + 1e-9)
        ax.legend(fontsize=8, ncol=len(ROUGE_KEYS), loc="upper center")
    return fig


def _params_plot(plt, evaluated: Sequence[dict], color: dict[str, str]):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in evaluated:
        if r["trainable_params"]:
            ax.scatter(r["trainable_params"], 100 * r["rougeL"], s=40, color=color[r["run"]])
            ax.annotate(r["run"], (r["trainable_params"], 100 * r["rougeL"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        else:  # nothing trained (zero_shot): no place on a log axis, drawn as a baseline
            ax.axhline(100 * r["rougeL"], ls=":", color="gray", label=f"{r['run']} (0 trainable)")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel="ROUGE-L F1 (%)",
           title="What each method trains vs what it gains")
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
        ax.legend(fontsize=8)
    return fig


def _save(fig, path: Path) -> Path:
    """Save a figure atomically (as io's writers: temporary name, then rename)."""
    import matplotlib.pyplot as plt  # late: matplotlib (0.7 s to import) only when plots are drawn

    buffer = stdio.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
