"""`report.html`: the comparison as one self-contained page - the answer paragraph first, the
tables (sortable), the cost-quality frontier, the plots (embedded PNGs), the facts, and an
article browser: per article the reference and every run's
prediction side by side with per-article ROUGE (and BERTScore F1), shared n-grams highlighted, and filters.

Offline by construction: CSS and JS inline (template.html), plots as data URIs, nothing fetched.
Untrusted text (articles, references, predictions, run names) never reaches the page as markup:
Python escapes what it writes into HTML, and the browser's data travels as JSON inside a
`<script type="application/json">` block with <, >, & and U+2028/9 escaped, which the page's
script inserts with textContent only.

Size: the browser holds at most `max_articles` articles (the first by id, default 500, ~3 MB
for CNN/DM articles x 5 runs); the tables and plots always cover every document.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from sumtune.config import load_run_config
from sumtune.data import load_splits
from sumtune.errors import UserError
from sumtune.io import atomic_write_text
from sumtune.report.frontier import frontier_body, frontier_note
from sumtune.report.plots import PLOTS
from sumtune.report.tables import (
    SCORE_NAMES,
    cost_body,
    facts,
    other_data_body,
    other_data_note,
    pair_body,
    pair_note,
    score_body,
    seed_body,
)
from sumtune.runs import RunDir

log = logging.getLogger(__name__)

MAX_ARTICLES = 500
SCORE_KEYS = ("rouge1", "rouge2", "rougeL")  # per article in the browser, and BERTScore F1 where scored
_WORD = re.compile(r"[a-z0-9]+")
_SLUG = re.compile(r"[^a-z0-9]+")


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no <, >, & or line/paragraph separators left raw
    (they only occur inside JSON strings, where the \\u escapes mean the same characters)."""
    text = json.dumps(obj, ensure_ascii=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                     ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


def repeats_ngram(text: str, n: int = 3) -> bool:
    """Whether a lowercased word n-gram occurs twice in `text` (words as rouge-score tokenises)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


# --- the article browser's data --------------------------------------------------


def _read_predictions(run: Path, split: str) -> list[dict]:
    path = RunDir(run).eval_dir(split) / "predictions.jsonl"
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON; the file is damaged, re-run sumtune evaluate") from None


def _articles_from_data(row: dict, run: Path, split: str) -> dict[str, str]:
    """{id: article} from the data a run was evaluated on, for predictions.jsonl files written
    before the article was stored there; empty (with a warning) when the data cannot be read."""
    cfg = load_run_config(run)
    recorded = row.get("eval_dataset") or {}  # another dataset's columns and cleaning, when evaluated on one
    columns = {f"{k}_column": v for k, v in (recorded.get("columns") or {}).items()}
    data = replace(cfg.data, source=row.get("eval_data") or cfg.data.source, max_eval_samples=0,
                   max_test_samples=0, **columns, clean=recorded.get("clean", cfg.data.clean))
    try:
        ds = load_splits(data, cfg.data.seed)[split]
    except (UserError, OSError, ValueError) as e:
        log.warning("report.html: articles not shown, %s could not be read (%s)", data.source, e)
        return {}
    return dict(zip(map(str, ds["id"]), ds["article"]))


def _prediction(p: dict) -> dict:
    text = str(p.get("prediction") or "")
    bert = {"bertscore_f1": p["bertscore_f1"]} if "bertscore_f1" in p else {}
    return {"text": text, **{k: p.get(k) for k in SCORE_KEYS}, **bert, "repeats": repeats_ngram(text)}


def browser_data(rows: Sequence[dict], runs: Sequence[Path], split: str,
                 max_articles: int = MAX_ARTICLES) -> dict[str, Any]:
    """The browser's runs (those with predictions) and articles (matched by id, the first
    `max_articles` by id), each with its reference, article and per-run prediction and ROUGE."""
    shown, preds = [], []
    for row, run in zip(rows, runs):
        lines = _read_predictions(run, split)
        if lines:
            shown.append((row, run))
            preds.append({str(p["id"]): p for p in lines})
    ids = sorted(set().union(*preds)) if preds else []
    kept = ids[:max_articles]
    articles: dict[str, str] = {}
    for by_id in preds:
        articles.update({i: by_id[i]["article"] for i in kept if i in by_id and "article" in by_id[i]})
    missing = [i for i in kept if i not in articles]
    if missing:  # predictions.jsonl from before the article was stored there
        from_data = _articles_from_data(*shown[0], split)
        articles.update({i: from_data[i] for i in missing if i in from_data})
    items = []
    for i in kept:
        first = next(by_id[i] for by_id in preds if i in by_id)
        items.append({"id": i, "article": articles.get(i), "reference": str(first.get("reference") or ""),
                      "preds": [_prediction(by_id[i]) if i in by_id else None for by_id in preds]})
    return {"runs": [{"run": r["run"], "method": r["method"]} for r, _ in shown], "total": len(ids),
            "max_articles": max_articles, "articles": items}


# --- the page ---------------------------------------------------------------------


def _key(name: str) -> str:
    """A column's key for #sort=...: rouge1/.../rougeLsum, bertscore_f1/..., else the header slugged."""
    reverse = {v: k for k, v in SCORE_NAMES.items()}
    return reverse.get(name) or _SLUG.sub("-", name.lower()).strip("-")


def table_html(head: list[str], body: list[list[str]], table_id: str) -> str:
    """A sortable table (the page's script sorts by a header click or #sort=KEY / #sort=-KEY)."""
    ths = "".join(f'<th data-key="{escape(_key(h))}" tabindex="0">{escape(h)}</th>' for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>\n" for cells in body)
    return f'<table class="sortable" id="{table_id}"><thead><tr>{ths}</tr></thead><tbody>\n{trs}</tbody></table>'


def _facts_html(rows: Sequence[dict], split: str) -> str:
    items = "".join(f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>" for label, text in facts(rows, split))
    return f'<dl class="facts">{items}</dl>'


def _plots_html(paths: Sequence[Path], ident: str = "") -> str:
    figures = []
    for p in paths:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{escape(Path(p).stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{escape(Path(p).name)}</figcaption></figure>")
    attr = f' id="{ident}"' if ident else ""
    return f'<div class="plots"{attr}>' + "".join(figures) + "</div>" if figures else "<p>No plots.</p>"


def _answer_html(report: dict) -> list[str]:
    ans = report.get("answer")
    if not ans:
        return []
    demo = ans["facts"].get("demo")
    paras = "".join(f'<p class="{"demo" if demo and i == 0 else "answer"}">{escape(t)}</p>'
                    for i, t in enumerate(ans["paragraphs"]))
    return ['<section id="answer"><h2>Answer: which method, for what it costs</h2>', paras, "</section>"]


def _frontier_html(report: dict) -> list[str]:
    front = report.get("frontier")
    if not front:
        return []
    image = [p for p in report["plots"] if Path(p).name == PLOTS["frontier"]]
    return ['<section id="frontier"><h2>Cost–quality frontier (ROUGE-L)</h2>',
            f'<p class="note">{escape(frontier_note(front))}</p>', _plots_html(image, "frontier-plot") if image else "",
            table_html(*frontier_body(front), "frontier-table"), "</section>"]


def _other_data_html(rows: Sequence[dict], split: str) -> list[str]:
    """The runs' evaluations on other data, labelled, apart from the scores (none: no section)."""
    head, body = other_data_body(rows)
    if not body:
        return []
    return [f'<section id="other-data"><h2>Evaluations on other data ({escape(split)} split)</h2>',
            f'<p class="note">{escape(other_data_note(split))}</p>', table_html(head, body, "other-data-table"),
            "</section>"]


def _sections(report: dict) -> str:
    rows, split = report["rows"], report["split"]
    others = [p for p in report["plots"] if Path(p).name != PLOTS["frontier"]]  # shown in its own section
    parts = [*_answer_html(report), '<section id="facts"><h2>What the figures are</h2>', _facts_html(rows, split),
             "</section>",
             '<section id="costs"><h2>Runs: what trained and what it cost</h2>',
             table_html(*cost_body(rows), "cost-table"), "</section>",
             f'<section id="scores"><h2>Scores on the {escape(split)} split</h2>',
             table_html(*score_body(rows), "score-table"), "</section>", *_other_data_html(rows, split),
             *_frontier_html(report)]
    if report["seeds"]:
        parts += ['<section id="seeds"><h2>Across seeds (mean ± sd)</h2>',
                  table_html(*seed_body(report["seeds"]), "seed-table"), "</section>"]
    if report["pairs"]:
        parts += ['<section id="pairs"><h2>Pairwise differences (paired bootstrap over documents)</h2>',
                  f"<p>{escape(pair_note(report['pairs'], '*'))}</p>", table_html(*pair_body(report["pairs"], star=" *"), "pair-table"),
                  "</section>"]
    parts += ['<section id="plots"><h2>Plots</h2>', _plots_html(others), "</section>"]
    return "\n".join(parts)


def render(report: dict, browser: dict) -> str:
    """The page: template.html with the sections and the browser's JSON filled in (one pass, so
    no text inserted is read again as a placeholder)."""
    template = resources.files("sumtune.report").joinpath("template.html").read_text(encoding="utf-8")
    parts = {"split": escape(report["split"]), "sections": _sections(report), "data": script_json(browser)}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)


def write_html(report: dict, runs: Sequence[Path], out: Path, max_articles: int = MAX_ARTICLES) -> Path:
    """Write OUT/report.html for a compare_runs report (its rows, seeds, pairs and plots)."""
    browser = browser_data(report["rows"], runs, report["split"], max_articles)
    path = Path(out) / "report.html"
    atomic_write_text(path, render(report, browser))
    return path
