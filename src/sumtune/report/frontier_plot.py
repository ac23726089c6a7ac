"""frontier.png: ROUGE-L with its 95% interval against each cost axis (training seconds, peak
memory, trainable parameters), the runs on each axis's frontier marked and joined as a staircase
(the best score reachable at each cost)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import cycle

from sumtune.report.frontier import AXES, HEADLINE, cost, marks


def _label(row: dict, several: Counter) -> str:
    return f"{row['method']} (seed {row['seed']})" if several[row["method"]] > 1 else row["method"]


def _scale(ax, xs: list[float]) -> str:
    """Log scale where the costs span a decade or more; symlog (0 has a place) when one is 0."""
    positive = [x for x in xs if x > 0]
    if not positive or max(positive) < 10 * min(positive):
        return "linear"
    if len(positive) < len(xs):
        ax.set_xscale("symlog", linthresh=min(positive))
        return "symlog: 0, then log"
    ax.set_xscale("log")
    return "log"


def frontier_figure(plt, rows: Sequence[dict], split: str, color: dict[str, str]):
    """The three-panel figure (a matplotlib Figure) for the evaluated rows of a comparison."""
    evaluated = [r for r in rows if r.get("evaluated") and r.get(HEADLINE) is not None]
    fig, axes = plt.subplots(1, len(AXES), figsize=(16, 5))
    several = Counter(r["method"] for r in evaluated)
    for ax, axis in zip(axes, AXES):
        on = marks(evaluated, axis)
        placed = [(r, cost(r, axis), m) for r, m in zip(evaluated, on) if m is not None]
        for r, x, m in placed:
            y, ci = 100 * r[HEADLINE], (r.get("ci95") or {}).get(HEADLINE)
            err = [[y - 100 * ci[0]], [100 * ci[1] - y]] if ci else None
            ax.errorbar([x], [y], yerr=err, fmt="*" if m else "o", ms=13 if m else 6, capsize=3,
                        color=color.get(r["run"], "black"), mec="black" if m else None)
            ax.annotate(_label(r, several), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        kinds = sorted({str(r.get("peak_memory_kind")) for r, _, _ in placed}) if axis == "peak_memory_mb" else [""]
        for style, kind in zip(cycle(("--", ":", "-.")), kinds):  # one staircase per kind of memory measurement
            front = sorted((x, 100 * r[HEADLINE]) for r, x, m in placed
                           if m and (not kind or str(r.get("peak_memory_kind")) == kind))
            if front:
                ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", lw=1, ls=style,
                        label="frontier" + (f" ({kind})" if len(kinds) > 1 else ""))
        scale = _scale(ax, [x for _, x, _ in placed])
        unit = AXES[axis] + (f" ({', '.join(kinds)})" if axis == "peak_memory_mb" else "")
        ax.margins(x=0.15)  # room for the labels of the costliest runs
        ax.set(xlabel=f"{unit} ({scale} scale)", ylabel="ROUGE-L F1 (%), 95% interval", title=f"vs {AXES[axis]}")
        if not placed:
            ax.text(0.5, 0.5, "no evaluated run records this cost", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8, loc="lower right")
    ns = sorted({r["n_test"] for r in evaluated if r.get("n_test")})
    decodings = sorted({str((r.get("decoding") or {}).get("label", "not recorded")) for r in evaluated})
    fig.suptitle(f"Cost–quality frontier: ROUGE-L on the {split} split (n = {', '.join(map(str, ns)) or '-'}, "
                 f"decoding {', '.join(decodings) or '-'}); ★ = on the frontier, dashed = frontier")
    return fig
