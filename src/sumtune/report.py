"""`sumtune compare`: the methods side by side - a Markdown and a JSON table (one row per
run) and three PNG plots (loss curves, ROUGE bars, trainable parameters vs ROUGE-L)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sumtune.checkpoint import atomic_write_json, atomic_write_text, read_json
from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.metrics import ROUGE_KEYS

PLOTS = {"loss": "loss_curves.png", "rouge": "rouge_bars.png", "params": "params_vs_rougeL.png"}


def run_row(run: Path, split: str = "test") -> dict[str, Any]:
    """One table row: the run's results.json and RUN/eval/<split>/metrics.json (None where absent)."""
    from sumtune.evaluate import check_finished_run

    check_finished_run(run)
    cfg = load_run_config(run)
    res = read_json(run / "results.json")
    trainable, total = res.get("trainable_params"), res.get("total_params")
    epochs, seconds = res.get("epochs_run") or 0, res.get("train_seconds")
    row: dict[str, Any] = {
        "run": run.name, "path": str(run), "method": cfg.method.name,
        "trainable_params": trainable, "total_params": total,
        "trainable_pct": 100.0 * trainable / total if trainable is not None and total else None,
        "train_seconds": seconds, "seconds_per_epoch": seconds / epochs if seconds is not None and epochs else None,
        "epochs_run": epochs, "peak_memory_mb": res.get("peak_memory_mb"), "tokens_per_s": res.get("tokens_per_s"),
        "lr": cfg.train.lr if cfg.method.name != "zero_shot" else None, "best_val_loss": res.get("best_val_loss"),
        "evaluated": False, "test_loss": None, "n_test": None, **dict.fromkeys(ROUGE_KEYS),
    }
    metrics = run / "eval" / split / "metrics.json"
    if metrics.is_file():
        m = read_json(metrics)
        row.update(evaluated=True, test_loss=m["loss"], n_test=m["n"], **{k: m[k] for k in ROUGE_KEYS})
    return row


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _params(row: dict) -> str:
    t = row["trainable_params"]
    if t is None:
        return "-"
    return f"{t:,} ({row['trainable_pct']:.3g}%)" if row["trainable_pct"] is not None else f"{t:,}"


def markdown_table(rows: Sequence[dict]) -> str:
    head = ["run", "method", "trainable params (% of total)", "train time (s)", "time/epoch (s)", "peak mem (MB)",
            "tokens/s", "best val loss", "test loss", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["method"], _params(r), _num(r["train_seconds"], ".1f"),
                 _num(r["seconds_per_epoch"], ".1f"), _num(r["peak_memory_mb"], ".0f"),
                 _num(r["tokens_per_s"], ".0f"), _num(r["best_val_loss"], ".4f")]
        if r["evaluated"]:
            cells += [_num(r["test_loss"], ".4f")] + [f"{100 * r[k]:.2f}" for k in ROUGE_KEYS]
        else:
            cells += ["not evaluated"] + ["-"] * len(ROUGE_KEYS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_curves(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per epoch: the mean of the logged training losses, and the validation loss (the epoch's last)."""
    path = run / "metrics.jsonl"
    train: dict[int, list[float]] = defaultdict(list)
    val: dict[int, float] = {}
    if not path.is_file():
        return {}, {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}, line {n}: not valid JSON; the file is damaged") from None
        if "loss" not in ev or "epoch" not in ev or not math.isfinite(ev["loss"]):
            continue
        epoch = math.ceil(ev["epoch"])  # logged as fractional progress: (0, 1] is epoch 1
        if ev.get("split") == "train":
            train[epoch].append(ev["loss"])
        elif ev.get("split") == "validation":
            val[epoch] = ev["loss"]
    return {e: sum(v) / len(v) for e, v in sorted(train.items())}, dict(sorted(val.items()))


def _plots(rows: Sequence[dict], runs: Sequence[Path], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    color = {row["run"]: colors[i % len(colors)] for i, row in enumerate(rows)}

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
    written.append(_save(fig, out / PLOTS["loss"]))

    evaluated = [r for r in rows if r["evaluated"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(ROUGE_KEYS)
    for j, key in enumerate(ROUGE_KEYS):
        xs = [i + (j - 1.5) * width for i in range(len(evaluated))]
        bars = ax.bar(xs, [100 * r[key] for r in evaluated], width, label=key)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(range(len(evaluated)), [r["run"] for r in evaluated])
    ax.set(ylabel="F1 (%)", title="ROUGE on the test set")
    if not evaluated:
        ax.text(0.5, 0.5, "no run evaluated yet (sumtune evaluate RUN)", ha="center", transform=ax.transAxes)
    else:
        ax.set_ylim(0, 1.25 * max(100 * r[k] for r in evaluated for k in ROUGE_KEYS) + 1e-9)
        ax.legend(fontsize=8, ncol=len(ROUGE_KEYS), loc="upper center")
    written.append(_save(fig, out / PLOTS["rouge"]))

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
    written.append(_save(fig, out / PLOTS["params"]))
    return written


def _save(fig, path: Path) -> Path:
    """Save a figure atomically (temporary name in the same directory, then rename)."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def compare_runs(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> dict[str, Any]:
    """Write compare.md, compare.json and the plots for `run_dirs` into `output` (default: their
    common parent directory); print the table and the files written."""
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise UserError("compare needs at least one run directory")
    rows = [run_row(r) for r in runs]
    parent = Path(os.path.commonpath([r.resolve().parent for r in runs]))
    if len({r["run"] for r in rows}) < len(rows):  # same directory names: label by path instead
        for row, run in zip(rows, runs):
            row["run"] = str(run.resolve().relative_to(parent))
    out = Path(output) if output else parent
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    plots = _plots(rows, runs, out)
    atomic_write_text(out / "compare.md", "# sumtune comparison\n\n" + table + "\n"
                      + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
    report = {"rows": rows, "plots": [str(p) for p in plots]}
    atomic_write_json(out / "compare.json", report)
    print(table)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}")
    for p in plots:
        print(f"plot: {p}")
    return report
