"""report.html: written by compare, every run in it, untrusted text escaped, the JSON block
parses, nothing fetched; and (marker `browser`) headless Chromium loads it: the tables sort,
the article browser shows every run's summary, the filters change the list, and an article
holding a <script> shows as text without running."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from conftest import write_kaggle_dir
from method_utils import make_run

from sumtune.io import atomic_write_json
from sumtune.report import compare_runs
from sumtune.report.html import browser_data, repeats_ngram, script_json

PAYLOAD = "<script>document.title='pwned'</script>"
METHODS = ("zero_shot", "lora", "last_layers")
# per article: ROUGE-L of zero_shot, lora, last_layers (in points); lora's worst is a05, best a02
SCORES = {"a01": (10, 40, 30), "a02": (20, 90, 25), "a03": (15, 35, 80), "a04": (5, 50, 45),
          "a05": (12, 2, 60), "a06": (30, 45, 40)}
PREDICTIONS = {"a03": {"lora": f"Officials said {PAYLOAD} & more \u2028 done."},
               "a04": {"zero_shot": "the storm the storm the storm hit the town"},
               "a06": {"last_layers": ""}}


def _article(i: str) -> str:
    return f"Article {i}: {PAYLOAD} The mayor of Boston announced a plan." if i == "a03" else \
        f"Article {i}: the mayor of Denver announced a storm warning for residents."


def _write_eval(run, method):
    lines = []
    for i, scores in SCORES.items():
        r_l = scores[METHODS.index(method)] / 100
        text = PREDICTIONS.get(i, {}).get(method, f"{method} says the mayor announced a plan for {i}.")
        lines.append({"id": i, "article": _article(i), "reference": f"The mayor announced a plan ({i}).",
                      "prediction": text, "rouge1": r_l + 0.1, "rouge2": r_l / 2, "rougeL": r_l,
                      "rougeLsum": r_l, "prediction_tokens": 9, "reference_tokens": 8})
    path = run / "eval/test/predictions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    mean = sum(x["rougeL"] for x in lines) / len(lines)
    atomic_write_json(run / "eval/test/metrics.json", {
        "loss": 2.6, "rouge1": mean + 0.1, "rouge2": mean / 2, "rougeL": mean, "rougeLsum": mean, "n": len(lines),
        "ci95": {k: [0.01, 0.9] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}})


def _run(root, model_dir, method, trainable, sets=(), name=None):
    run, *_ = make_run(root / (name or method), model_dir, method, sets=("method.lora.r=4", *sets))
    atomic_write_json(run / "results.json", {
        "method": method, "trainable_params": trainable, "total_params": 1000, "train_seconds": 10.0 + trainable,
        "epochs_run": 2, "best_val_loss": 2.5, "peak_memory_mb": 300.0, "tokens_per_s": 950.0, "finished": True})
    return run


@pytest.fixture(scope="module")
def built(tiny_neo, tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    runs = [_run(root, tiny_neo, m, t) for m, t in zip(METHODS, (0, 40, 500))]
    for run, method in zip(runs, METHODS):
        _write_eval(run, method)
    return root, runs


@pytest.fixture(scope="module")
def page(built):
    root, runs = built
    compare_runs(runs, root / "cmp")
    return root / "cmp/report.html"


def _data_block(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="browser-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(block)


def test_compare_writes_the_report_and_prints_its_path_last(built, capsys):
    root, runs = built
    compare_runs(runs, root / "again")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(root / "again/report.html")
    assert lines[-3].startswith("plot: ")  # the plots are still printed, before it


def test_report_holds_every_run_the_tables_and_the_plots(page):
    html = page.read_text(encoding="utf-8")
    for method in METHODS:
        assert f"<td>{method}</td>" in html
    assert "<td>43.67 [1.00, 90.00]</td>" in html  # lora's ROUGE-L with its interval, as in compare.md
    assert html.count('src="data:image/png;base64,') == 4  # the frontier in its own section
    assert "Seeds and lr per method" in html and "lora seed 42, lr 0.0003" in html


def test_untrusted_text_is_escaped_and_the_data_block_parses(page):
    html = page.read_text(encoding="utf-8")
    assert "document.title" not in html.replace("\\u003cscript\\u003edocument.title", "")
    assert "\u2028" not in html
    data = _data_block(html)
    assert [r["run"] for r in data["runs"]] == list(METHODS)
    by_id = {a["id"]: a for a in data["articles"]}
    assert list(by_id) == sorted(SCORES) and by_id["a03"]["article"] == _article("a03")
    assert by_id["a03"]["preds"][1]["text"] == PREDICTIONS["a03"]["lora"]
    assert by_id["a04"]["preds"][0]["repeats"] and not by_id["a04"]["preds"][1]["repeats"]
    assert by_id["a06"]["preds"][2]["text"] == ""


def test_nothing_is_fetched(page):
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(link|iframe)\b|@import|\bsrc=\"(?!data:)", html)


def test_script_json_and_repeats():
    text = script_json({"a": "</script><b>&\u2028\u2029"})
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"a": "</script><b>&\u2028\u2029"}
    assert repeats_ngram("The storm hit; the STORM hit.") and not repeats_ngram("the storm hit the town")
    assert not repeats_ngram("")


def test_browser_is_capped_by_id(built):
    _root, runs = built
    from sumtune.report.rows import run_row

    data = browser_data([run_row(r) for r in runs], runs, "test", max_articles=2)
    assert [a["id"] for a in data["articles"]] == ["a01", "a02"] and data["total"] == 6


def test_articles_come_from_the_data_when_predictions_lack_them(tiny_neo, tmp_path):
    """predictions.jsonl written before the article was stored there: the page reads the run's data."""
    from sumtune.config import load_run_config
    from sumtune.data import load_splits
    from sumtune.report.rows import run_row

    data_dir = write_kaggle_dir(tmp_path / "cnndm")
    run = _run(tmp_path, tiny_neo, "lora", 40, sets=(f"data.source={data_dir}",))
    test = load_splits(load_run_config(run).data, 42)["test"]
    line = {"id": test[0]["id"], "reference": "r", "prediction": "p", "rouge1": 0.1, "rouge2": 0.1, "rougeL": 0.1,
            "rougeLsum": 0.1}
    (run / "eval/test").mkdir(parents=True)
    (run / "eval/test/predictions.jsonl").write_text(json.dumps(line) + "\n")
    atomic_write_json(run / "eval/test/metrics.json", {"rouge1": 0.1, "rouge2": 0.1, "rougeL": 0.1,
                                                       "rougeLsum": 0.1, "n": 1})
    assert browser_data([run_row(run)], [run], "test")["articles"][0]["article"] == test[0]["article"]


# --- headless Chromium -------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                                            "chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (chromium, "
                                    "chromium-browser, google-chrome); .ci/run installs it with apt")


def _chromium(page, fragment, tmp_path, *args) -> str:
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", *args,
           page.resolve().as_uri() + "#" + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Dom(HTMLParser):
    """The dumped DOM, enough to read: elements as [tag, attrs, children], text as str."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "col", "source", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.root: list = ["#root", {}, []]
        self.stack = [self.root]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = [tag, dict(attrs), []]
        self.stack[-1][2].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.stack[-1][2].append(data)

    def all(self, pred, node=None) -> list:
        node = node or self.root
        found = [node] if pred(node) else []
        for child in node[2]:
            if isinstance(child, list):
                found += self.all(pred, child)
        return found

    def by_id(self, ident: str) -> list:
        return self.all(lambda n: n[1].get("id") == ident)[0]

    @staticmethod
    def text(node) -> str:
        return "".join(c if isinstance(c, str) else _Dom.text(c) for c in node[2])


def _dom(page, fragment, tmp_path) -> _Dom:
    return _Dom(_chromium(page, fragment, tmp_path, "--dump-dom"))


def _column(dom, table_id, index=0) -> list[str]:
    rows = dom.all(lambda n: n[0] == "tr", dom.by_id(table_id))[1:]
    return [dom.text([c for c in r[2] if isinstance(c, list)][index]) for r in rows]


@pytest.mark.browser
@needs_chromium
def test_tables_have_a_row_per_run_and_sort(page, tmp_path):
    dom = _dom(page, "", tmp_path)
    assert _column(dom, "cost-table") == list(METHODS) and _column(dom, "score-table") == list(METHODS)
    assert _column(_dom(page, "sort=-rougeL", tmp_path), "score-table") == ["last_layers", "lora", "zero_shot"]
    assert _column(_dom(page, "sort=rougeL", tmp_path), "score-table") == ["zero_shot", "lora", "last_layers"]
    assert _column(_dom(page, "sort=-train-s", tmp_path), "cost-table") == ["last_layers", "lora", "zero_shot"]


@pytest.mark.browser
@needs_chromium
def test_article_browser_shows_every_run_and_filters(page, tmp_path):
    dom = _dom(page, "article=a02", tmp_path)
    cards = {c[1]["data-run"]: dom.text(c) for c in dom.all(lambda n: "data-run" in n[1])}
    assert list(cards) == list(METHODS)
    for method in METHODS:
        assert f"{method} says the mayor announced a plan for a02." in cards[method]
    assert "ROUGE-L 90.0" in cards["lora"] and dom.text(dom.by_id("article-id")) == "Article a02"
    listed = [o[1]["value"] for o in dom.all(lambda n: n[0] == "option", dom.by_id("article-list"))]
    assert listed == sorted(SCORES)

    worst = _dom(page, "filter=worst:lora", tmp_path)
    order = [o[1]["value"] for o in worst.all(lambda n: n[0] == "option", worst.by_id("article-list"))]
    assert order == sorted(SCORES, key=lambda i: SCORES[i][1]) and order != listed
    assert worst.text(worst.by_id("article-id")) == "Article a05"  # the first of the filtered list
    dis = _dom(page, "filter=disagree:lora,last_layers", tmp_path)
    assert dis.all(lambda n: n[0] == "option", dis.by_id("article-list"))[0][1]["value"] == "a02"  # |90 - 25|
    for kind, ids in (("repeats", ["a04"]), ("empty", ["a06"])):
        d = _dom(page, f"filter={kind}", tmp_path)
        assert [o[1]["value"] for o in d.all(lambda n: n[0] == "option", d.by_id("article-list"))] == ids


@pytest.mark.browser
@needs_chromium
def test_a_script_in_the_data_shows_as_text_and_does_not_run(page, tmp_path):
    raw = _chromium(page, "article=a03", tmp_path, "--dump-dom")
    dom = _Dom(raw)
    assert dom.text(dom.all(lambda n: n[0] == "title")[0]) == "sumtune comparison"
    assert dom.text(dom.by_id("article-text")) == _article("a03")
    lora = next(c for c in dom.all(lambda n: n[1].get("data-run") == "lora"))
    assert PAYLOAD in dom.text(lora)
    assert "<script>document.title" not in raw and "&lt;script&gt;document.title" in raw


@pytest.mark.browser
@needs_chromium
def test_screenshots(page, tmp_path):
    """The top of the page, and the whole page (the browser is below the plots) for a filtered article."""
    for name, fragment, height in (("top", "", 2000), ("browser", "filter=worst:lora&article=a03", 3600)):
        shot = tmp_path / f"{name}.png"
        _chromium(page, fragment, tmp_path, f"--screenshot={shot}", f"--window-size=1400,{height}",
                  "--hide-scrollbars")
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


# --- the answer paragraph and the cost-quality frontier ----------------------------

EVIL = "lora<script>document.title='pwned'&amp;"  # a run directory's name, shown as text


@pytest.fixture(scope="module")
def frontier_page(tiny_neo, tmp_path_factory):
    """The same three runs, lora's directory named EVIL, with evaluation timings recorded."""
    root = tmp_path_factory.mktemp("frontier")
    runs = [_run(root, tiny_neo, m, t, name=EVIL if m == "lora" else None) for m, t in zip(METHODS, (0, 40, 500))]
    for run, method in zip(runs, METHODS):
        _write_eval(run, method)
        metrics = json.loads((run / "eval/test/metrics.json").read_text())
        atomic_write_json(run / "eval/test/metrics.json", {**metrics, "generation_seconds": 3.0, "loss_seconds": 0.6,
                                                           "split_rows": 1000, "decoding": {"label": "cnndm"}})
    compare_runs(runs, root / "cmp")
    return root / "cmp"


def test_compare_md_leads_with_the_answer_and_holds_the_frontier(frontier_page):
    md = (frontier_page / "compare.md").read_text(encoding="utf-8")
    assert md.index("## Answer") < md.index("- **Data:**") < md.index("## Cost–quality frontier (ROUGE-L)")
    assert "ROUGE-L F1 × 100 on the test split, n = 6 documents, decoding cnndm" in md
    # cost on each axis, the score with its interval, the marks (all 300 MB: last_layers, best, alone on memory)
    assert (f"| {EVIL} | lora | 42 | 43.67 [1.00, 90.00] | 50.0 | ★ | 300 (peak RSS) |  | 40 | ★ | "
            "≈ 10 min projected for 1,000 rows (loss + decoding: 3.6 s for n = 6 decoded, cnndm) |") in md
    assert "| last_layers | last_layers | 42 | 46.67 [1.00, 90.00] | 510.0 | ★ | 300 (peak RSS) | ★ | 500 | ★ |" in md
    saved = json.loads((frontier_page / "compare.json").read_text(encoding="utf-8"))
    assert saved["answer"]["text"] == "\n\n".join(saved["answer"]["paragraphs"]) and saved["answer"]["facts"]["tiers"]
    lora = next(r for r in saved["frontier"]["runs"] if r["method"] == "lora")
    assert lora["projected_eval"]["seconds"] == pytest.approx(600.0) and lora["projected_eval"]["projected"]
    assert saved["plots"][-1].endswith("frontier.png")


def test_run_names_in_the_frontier_are_escaped(frontier_page):
    html = (frontier_page / "report.html").read_text(encoding="utf-8")
    assert "<script>document.title" not in html
    assert "lora&lt;script&gt;document.title=&#x27;pwned&#x27;&amp;amp;" in html


HARNESS = """<!DOCTYPE html><html><body><iframe id="f" src="report.html"></iframe><pre id="out">pending</pre>
<script>
document.getElementById("f").addEventListener("load", () => {
  const d = document.getElementById("f").contentDocument;
  const img = d.querySelector("#frontier-plot img");
  document.getElementById("out").textContent = JSON.stringify({
    first: d.querySelector("main > section").id, title: d.title,
    frontierWidth: img ? img.naturalWidth : -1,
    widths: Array.from(d.querySelectorAll("img")).map((i) => i.naturalWidth)});
});
</script></body></html>"""
# --- selection by validation ROUGE (train.select_by) ---------------------------------

SELECT_SCORES = (0.10, 0.25, 0.20)  # lora's recorded validation rougeL at steps 1..3: step 2 kept


@pytest.fixture(scope="module")
def selected_page(built, tmp_path_factory):
    """The same runs, lora's recording the validation ROUGE of a select_by=rougeL run."""
    root, runs = built
    out = tmp_path_factory.mktemp("selected")
    copies = [out / r.name for r in runs]
    for r, c in zip(runs, copies):
        shutil.copytree(r, c)
    lora = copies[METHODS.index("lora")]
    events = [{"step": s, "epoch": s / 3, "split": "validation", "loss": 3.0 - s / 10, "best": v == max(SELECT_SCORES[:s]),
               "rouge1": v, "rouge2": v / 2, "rougeL": v, "rougeLsum": v, "ci95": {"rougeL": [v - 0.05, v + 0.05]},
               "select_n": 4, "select_seconds": 0.5} for s, v in enumerate(SELECT_SCORES, 1)]
    (lora / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    res = json.loads((lora / "results.json").read_text())
    atomic_write_json(lora / "results.json", {**res, "select_by": "rougeL", "best_score": 0.25, "best_step": 2})
    compare_runs(copies, out / "cmp")
    return out / "cmp"


def test_the_validation_rouge_curve_is_plotted_and_shown(selected_page, page):
    import matplotlib.image

    html = (selected_page / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 5  # the four plots and the curve
    assert "<figcaption>val_rouge_curves.png</figcaption>" in html
    png = re.search(r'alt="val_rouge_curves" src="data:image/png;base64,([^"]+)"', html).group(1)
    assert matplotlib.image.imread(io.BytesIO(base64.b64decode(png)), format="png").shape[1] > 500
    md = (selected_page / "compare.md").read_text(encoding="utf-8")
    assert "selected by" in md and "| rougeL 25.00 |" in md and "![val_rouge_curves](val_rouge_curves.png)" in md
    assert "val_rouge_curves" not in page.read_text(encoding="utf-8")  # no run recorded ROUGE: no curve


@pytest.mark.browser
@needs_chromium
def test_the_answer_comes_first_the_frontier_loads_and_marks(frontier_page, tmp_path):
    page = frontier_page / "report.html"
    dom = _dom(page, "", tmp_path)
    main = dom.all(lambda n: n[0] == "main")[0]
    first = next(c for c in main[2] if isinstance(c, list))
    assert first[1]["id"] == "answer" and "Answer: which method" in dom.text(first)
    assert "n = 6 documents" in dom.text(first) and "seeds: zero_shot 42" in dom.text(first)
    assert _column(dom, "frontier-table") == ["zero_shot", EVIL, "last_layers"]  # the name shows as text
    assert _column(dom, "frontier-table", 5) == ["★", "★", "★"]  # training time: all on the frontier
    assert _column(dom, "frontier-table", 7) == ["", "", "★"]  # peak memory: all 300 MB, last_layers best
    assert dom.text(dom.all(lambda n: n[0] == "title")[0]) == "sumtune comparison"

    harness = frontier_page / "harness.html"
    harness.write_text(HARNESS, encoding="utf-8")
    out = _Dom(_chromium(harness, "", tmp_path, "--allow-file-access-from-files", "--dump-dom"))
    seen = json.loads(out.text(out.by_id("out")))
    assert seen["first"] == "answer" and seen["title"] == "sumtune comparison"
    assert seen["frontierWidth"] > 0 and len(seen["widths"]) == 4 and min(seen["widths"]) > 0


@pytest.mark.browser
@needs_chromium
def test_the_browser_shows_the_validation_rouge_curve(selected_page, tmp_path):
    dom = _dom(selected_page / "report.html", "", tmp_path)
    figures = dom.all(lambda n: n[0] == "figure", dom.by_id("plots"))
    captions = [dom.text(f) for f in figures]
    assert "val_rouge_curves.png" in captions and captions.index("val_rouge_curves.png") == 1  # beside the loss curves
    img = next(c for c in figures[1][2] if isinstance(c, list) and c[0] == "img")
    assert img[1]["src"].startswith("data:image/png;base64,")
    assert _column(dom, "cost-table", -1) == ["-", "rougeL 25.00", "loss"]  # zero_shot selects nothing
