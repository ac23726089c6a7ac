"""The cost-quality frontier: per cost axis (training seconds, peak memory, trainable
parameters) which runs no other run beats on both cost and quality, and each run's projected
cost of evaluating the whole split.

Quality is the headline metric, ROUGE-L F1 on the compared split (the score the report's plots
and article browser lead with), as a point estimate; its 95% interval is shown beside it, and
whether a difference is real is the answer paragraph's business (report/answer.py).

Pareto rule: run i is dominated when another run j costs no more (cost_j <= cost_i) and scores
no less (score_j >= score_i), and is strictly better in at least one of the two. The frontier
is the runs not dominated. Exact ties in both cost and score dominate neither way, so tied runs
are on the frontier together; a run costing more for the same score is not. A run without the
cost recorded, or not evaluated, has no place on that axis. Peak memory is only compared
between runs measuring the same kind (peak RSS against peak RSS, CUDA against CUDA): each kind
has its own frontier. Nothing trains in zero_shot: its training time and trainable parameters
are 0, whatever else the record holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sumtune.io import read_json
from sumtune.report.tables import _num, _table
from sumtune.runs import RunDir

HEADLINE = "rougeL"
AXES = {"train_seconds": "training seconds", "peak_memory_mb": "peak memory MB", "trainable_params": "trainable parameters"}
RULE = ("a run is on the frontier of a cost axis unless another run costs no more and scores at least as high "
        "ROUGE-L, strictly better in one of the two (exact ties in both stay on it together); peak memory is "
        "compared within one kind of measurement")


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, score) points: whether each is on the frontier (the module's rule)."""
    def dominated(i: int) -> bool:
        c, s = points[i]
        return any(cj <= c and sj >= s and (cj < c or sj > s) for j, (cj, sj) in enumerate(points) if j != i)

    return [not dominated(i) for i in range(len(points))]


def cost(row: dict, axis: str) -> float | None:
    """A run's cost on an axis; 0 training seconds and parameters when nothing trains."""
    if axis in ("train_seconds", "trainable_params") and row.get("trainable_params") == 0:
        return 0.0
    value = row.get(axis)
    return None if value is None else float(value)


def marks(rows: Sequence[dict], axis: str) -> list[bool | None]:
    """Per row: on the axis's frontier, off it, or None (not evaluated / cost not recorded)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("evaluated") and r.get(HEADLINE) is not None and cost(r, axis) is not None:
            kind = str(r.get("peak_memory_kind")) if axis == "peak_memory_mb" else ""
            groups.setdefault(kind, []).append(i)
    out: list[bool | None] = [None] * len(rows)
    for members in groups.values():
        for i, on in zip(members, pareto([(cost(rows[i], axis), rows[i][HEADLINE]) for i in members])):
            out[i] = on
    return out


def projected_eval(row: dict, split: str) -> dict[str, Any]:
    """The projected seconds to evaluate the whole split (loss pass + decoding), scaled from the
    run's own evaluation: seconds per document measured on n documents x the split's rows.
    `seconds` is None, with `why`, when the evaluation did not record what it needs."""
    path = RunDir(row["path"]).eval_dir(split) / "metrics.json"
    if not path.is_file():
        return {"seconds": None, "why": "not evaluated"}
    m = read_json(path)
    n, decode, loss, rows = m.get("n"), m.get("generation_seconds"), m.get("loss_seconds"), m.get("split_rows")
    if not n or decode is None or not rows:
        return {"seconds": None, "why": "timings or split size not recorded; re-run sumtune evaluate"}
    measured = decode + (loss or 0.0)
    return {"seconds": measured / n * rows, "split_rows": rows, "n": n, "measured_seconds": measured,
            "includes_loss": loss is not None, "decoding": (m.get("decoding") or {}).get("label"),
            "processes": m.get("processes", 1), "projected": True}


def frontier(rows: Sequence[dict], split: str) -> dict[str, Any]:
    """The frontier record for compare.json: per run its costs, score, interval, marks per axis
    and projected evaluation cost."""
    on = {axis: marks(rows, axis) for axis in AXES}
    runs = []
    for i, r in enumerate(rows):
        ci = (r.get("ci95") or {}).get(HEADLINE)
        runs.append({"run": r["run"], "method": r["method"], "seed": r["seed"], "score": r.get(HEADLINE),
                     "ci95": ci, "costs": {axis: cost(r, axis) for axis in AXES},
                     "peak_memory_kind": r.get("peak_memory_kind"),
                     "on_frontier": {axis: on[axis][i] for axis in AXES}, "projected_eval": projected_eval(r, split)})
    return {"metric": HEADLINE, "split": split, "rule": RULE, "axes": dict(AXES), "runs": runs}


# --- text ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """Seconds in the unit a reader takes in at a glance."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def projected_text(p: dict) -> str:
    if p.get("seconds") is None:
        return f"- ({p.get('why')})"
    what = "loss + decoding" if p["includes_loss"] else "decoding only"
    procs = f", {p['processes']} processes" if (p.get("processes") or 1) > 1 else ""
    return (f"≈ {duration(p['seconds'])} projected for {p['split_rows']:,} rows ({what}: {p['measured_seconds']:.3g} s "
            f"for n = {p['n']:,} decoded, {p['decoding']}{procs})")


MARK = "★"


def _mark(on: bool | None) -> str:
    return "-" if on is None else MARK if on else ""


def _score(entry: dict) -> str:
    if entry["score"] is None:
        return "-"
    ci = entry["ci95"]
    return f"{100 * entry['score']:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def frontier_body(front: dict) -> tuple[list[str], list[list[str]]]:
    """The frontier table's header and cells (shared by the Markdown and the HTML report)."""
    head = ["run", "method", "seed", "ROUGE-L [95% CI]", "train s", "frontier: time", "peak memory MB",
            "frontier: memory", "trainable params", "frontier: params", f"projected full {front['split']} evaluation"]
    body = []
    for e in front["runs"]:
        c, on = e["costs"], e["on_frontier"]
        memory = f"{_num(c['peak_memory_mb'], '.0f')} ({e['peak_memory_kind']})"
        params = "-" if c["trainable_params"] is None else f"{int(c['trainable_params']):,}"
        body.append([e["run"], e["method"], str(e["seed"]), _score(e), _num(c["train_seconds"], ".1f"),
                     _mark(on["train_seconds"]), memory, _mark(on["peak_memory_mb"]), params,
                     _mark(on["trainable_params"]), projected_text(e["projected_eval"])])
    return head, body


def frontier_note(front: dict) -> str:
    return (f"{MARK} = on the cost–quality frontier of that axis (ROUGE-L F1 × 100 on the {front['split']} split, "
            f"point estimate): {front['rule']}. `-` = no place on the axis (not evaluated or cost not recorded). "
            "The projected evaluation scales each run's own measured seconds per document to the split's rows "
            "(same machine, batch and decoding).")


def frontier_markdown(front: dict) -> str:
    return f"## Cost–quality frontier (ROUGE-L)\n\n{frontier_note(front)}\n\n" + _table(*frontier_body(front))
