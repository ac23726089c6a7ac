"""Example summaries for compare.md: the first documents that every evaluated run summarised, each
run's summary beside the reference, so a reader sees what the scores measure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sumtune.runs import RunDir

ARTICLE_CHARS = 300  # the article's opening shown above its summaries


def _predictions(run: Path, split: str) -> dict[str, dict]:
    path = RunDir(run).eval_dir(split) / "predictions.jsonl"
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {str(r["id"]): r for r in rows}


def examples(runs: Sequence[Path], labels: Sequence[str], split: str, k: int = 2) -> list[dict]:
    """The first `k` documents (in the first evaluated run's order) that every evaluated run has:
    {"id", "article" (its opening), "reference", "summaries": {label: text}}."""
    preds = [(label, p) for label, run in zip(labels, runs) if (p := _predictions(Path(run), split))]
    if not preds:
        return []
    common = [i for i in preds[0][1] if all(i in p for _, p in preds)]
    out = []
    for i in common[:k]:
        first = preds[0][1][i]
        article = " ".join(first.get("article", "").split())
        out.append({"id": i, "article": article[:ARTICLE_CHARS] + ("…" if len(article) > ARTICLE_CHARS else ""),
                    "reference": first["reference"], "summaries": {label: p[i]["prediction"] for label, p in preds}})
    return out


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or "(empty)"


def examples_markdown(items: Sequence[dict], split: str) -> str:
    """compare.md's section: per document, its opening, the reference and each run's summary."""
    if not items:
        return ""
    parts = [f"## Example summaries ({split} split, the first {len(items)} documents every run summarised)\n"]
    for item in items:
        parts.append(f"**{item['id']}**: {item['article']}\n")
        lines = [f"- *reference*: {_one_line(item['reference'])}"]
        lines += [f"- *{label}*: {_one_line(text)}" for label, text in item["summaries"].items()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
