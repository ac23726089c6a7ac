"""`sumtune compare`: the runs side by side - compare.md (the answer paragraph, a header saying
what the figures are, costs, scores with 95% intervals, evaluations on other data (labelled, apart
from the run's own split, which stays the headline), the cost-quality frontier, seeds, pairwise
tests, example summaries beside their references), compare.json (the same data), the PNG plots and report.html (all of it in one offline
page, with an article browser)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sumtune.errors import UserError
from sumtune.io import atomic_write_json, atomic_write_text, read_json
from sumtune.lock import DirLock, is_main_process
from sumtune.report.answer import answer, answer_markdown, is_demo
from sumtune.report.examples import examples, examples_markdown
from sumtune.report.frontier import frontier, frontier_markdown
from sumtune.report.html import MAX_ARTICLES, write_html
from sumtune.report.plots import loss_curves, plots
from sumtune.report.rows import run_row
from sumtune.report.stats import pairwise, seed_summary
from sumtune.report.tables import markdown, other_data

__all__ = ["compare_runs", "loss_curves", "run_row", "write_html"]


def _experiment_record(out: Path, experiment: dict | None) -> dict | None:
    if experiment is not None:
        return experiment
    path = out / "experiment.json"
    return read_json(path) if path.is_file() else None


def compare_runs(run_dirs: Sequence[str | Path], output: str | Path | None = None, split: str = "test",
                 experiment: dict | None = None, max_articles: int = MAX_ARTICLES) -> dict[str, Any]:
    """Write compare.md, compare.json, the plots and report.html for `run_dirs` into `output`
    (default: their common parent directory); print the tables and the files written, the
    report's path last. `experiment`: the experiment's record (default: OUTPUT/experiment.json
    when present) for sweep costs and edges; `max_articles`: the report's article browser cap."""
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise UserError("compare needs at least one run directory")
    parent = Path(os.path.commonpath([r.resolve().parent for r in runs]))
    out = Path(output) if output else parent
    record = _experiment_record(out, experiment)
    rows = [run_row(r, split, record) for r in runs]
    if len({r["run"] for r in rows}) < len(rows):  # same directory names: label by path instead
        for row, run in zip(rows, runs):
            row["run"] = str(run.resolve().relative_to(parent))
    seeds, pairs = seed_summary(rows), pairwise(rows, runs, split)
    front, ans = frontier(rows, split), answer(rows, pairs, split, is_demo(record, runs))
    shown = examples(runs, [r["run"] for r in rows], split)
    text = markdown(rows, seeds, pairs, split, answer_markdown(ans), frontier_markdown(front))
    text += "\n" + examples_markdown(shown, split) if shown else ""
    extra = {"frontier": front, "answer": ans, "examples": shown, "other_data": other_data(rows)}
    if not is_main_process():  # under accelerate launch (experiment) the main process writes
        return {"split": split, "rows": rows, "seeds": seeds, "pairs": pairs, "plots": [], **extra}
    with DirLock(out, "comparison directory"):
        written = plots(rows, runs, out, split)
        atomic_write_text(out / "compare.md", text + "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in written))
        report = {"split": split, "rows": rows, "seeds": seeds, "pairs": pairs, "plots": [str(p) for p in written],
                  **extra}
        atomic_write_json(out / "compare.json", report)
        print(text)
        print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}")
        for p in written:
            print(f"plot: {p}")
        page = write_html(report, runs, out, max_articles)
    print("report (one file, open it in any browser):")
    print(page)
    return report
