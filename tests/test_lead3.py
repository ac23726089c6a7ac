"""Lead-3, the extractive baseline: the article's first three sentences, no model anywhere (train,
evaluate, summarize, plan, experiment), scored and compared like every other method; its ROUGE on
the real CNN/DM test rows equals rouge-score's own, computed here without sumtune's ROUGE code."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from test_comparison import _flags as comparison_flags

from sumtune.cli import main
from sumtune.config import build_config
from sumtune.errors import UserError
from sumtune.methods import get_method
from sumtune.recipes import experiment
from sumtune.recipes.evaluate import evaluate_run
from sumtune.recipes.experiment import Plan, for_data
from sumtune.recipes.train import train

CNNDM = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm"  # ../shared/data/cnndm from the repo root


def _read(path):
    return json.loads(Path(path).read_text())


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model's weights fails the test (tokenizers and configs may load)."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a lead3 step loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _flags(out, model_dir, data, **extra):
    return comparison_flags(out, model_dir, data, **{"train.max_steps": 2, "eval.min_new_tokens": 0, **extra})


def _lead3_run(out, model_dir, data, **extra):
    return train(build_config(flags=_flags(out, model_dir, data, **{"method.name": "lead3", **extra})))


def test_lead3_summary_is_the_first_three_sentences():
    m = get_method("lead3")
    assert not m.needs_model and not m.trains
    text = "Dr. Smith arrived at 9 a.m. on Monday. He left. The U.S. team won 3.5 points. A fourth one."
    assert m.summarize([text], m.options(build_config().method)) == [
        "Dr. Smith arrived at 9 a.m. on Monday.\nHe left.\nThe U.S. team won 3.5 points."]
    assert m.summarize(["Only one."], m.options(build_config().method)) == ["Only one."]


@pytest.mark.skipif(not (CNNDM / "test.csv").is_file(), reason=f"the shared CNN/DM rows are not at {CNNDM}")
def test_lead3_rouge_on_cnndm_equals_rouge_score_directly(tiny_neo, tmp_path, no_model):
    """All 250 rows of ../shared/data/cnndm/test.csv with data.clean on (the cnndm preset): the reference
    computation reads the CSV itself, cleans the articles with the same public function
    (`sumtune.data.clean_article`; the raw highlights differ from sumtune's cleaned ones in whitespace only,
    which rouge-score's tokenizer ignores), takes pySBD's first three sentences, and scores each row with
    rouge-score itself (Lsum on newline-joined sentences, each highlight line split by pySBD as well),
    then averages."""
    import pysbd
    from rouge_score import rouge_scorer

    from sumtune.data import clean_article

    run = _lead3_run(tmp_path / "lead3", tiny_neo, CNNDM, **{"data.preset": "cnndm"})
    metrics = evaluate_run(run, "test", limit=0)
    assert metrics["n"] == 250 and metrics["loss"] is None and metrics["dataset"]["clean"] is True

    seg = pysbd.Segmenter(language="en", clean=False)

    def sentences(text):  # pySBD per line (a highlight per line)
        return [s.strip() for line in text.splitlines() if line.strip() for s in seg.segment(line) if s.strip()]

    def lead3(article):  # a span pySBD splits when it sees it alone is split again (it leaves some whole in context)
        out, pending = [], sentences(article)
        while pending and len(out) < 3:
            parts = sentences(pending.pop(0))
            if len(parts) > 1:
                pending[:0] = parts
            else:
                out += parts
        return out

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    with open(CNNDM / "test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 250
    scores = {k: [] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for row in rows:
        lead = "\n".join(lead3(clean_article(row["article"])))
        reference = "\n".join(sentences(row["highlights"]))
        s = scorer.score(reference, lead)
        for k in scores:
            scores[k].append(s[k].fmeasure)
    for k, values in scores.items():
        assert metrics[k] == pytest.approx(statistics.fmean(values), abs=1e-6), k
        low, high = metrics["ci95"][k]
        assert low < metrics[k] < high
    print("lead3 on cnndm/test.csv (n=250): " + ", ".join(
        f"{k} {100 * metrics[k]:.2f} [{100 * metrics['ci95'][k][0]:.2f}, {100 * metrics['ci95'][k][1]:.2f}]"
        for k in scores))
    assert 0.28 < metrics["rouge1"] < 0.32  # shared/data/README.md: about 30 ROUGE-1 on these CNN rows


def test_lead3_run_evaluates_and_compares_beside_zero_shot(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    from sumtune.report import compare_runs
    from sumtune.report.answer import versus

    with monkeypatch.context() as m:  # lead3's train and evaluate load no model
        import transformers

        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                  lambda *a, **k: (_ for _ in ()).throw(AssertionError("lead3 loaded a model")))
        lead = _lead3_run(tmp_path / "lead3", tiny_neo, kaggle_dir)
        res = _read(lead / "results.json")
        assert res["finished"] and res["trainable_params"] == 0 and res["train_seconds"] == 0
        assert res["base_model"] == {"name": str(tiny_neo), "loaded": False} and res["best_val_loss"] is None
        assert _read(lead / "adapter/sumtune.json")["method"] == "lead3"
        metrics = evaluate_run(lead, "test")
        assert metrics["loss"] is None and metrics["decoding"]["label"] == "extractive"
        assert metrics["generation_seconds"] > 0 and set(metrics["ci95"]) >= {"rouge1", "rougeLsum"}
    assert "loss -" in capsys.readouterr().out
    preds = [json.loads(x) for x in (lead / "eval/test/predictions.jsonl").read_text().splitlines()]
    assert all(p["prediction"] and len(p["prediction"].split("\n")) <= 3 for p in preds)

    zero = train(build_config(flags=_flags(tmp_path / "zero_shot", tiny_neo, kaggle_dir, **{"method.name": "zero_shot"})))
    evaluate_run(zero, "test")
    report = compare_runs([lead, zero], tmp_path / "cmp")
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["lead3"]["evaluated"] and rows["lead3"]["test_loss"] is None and rows["lead3"]["extractive"]
    assert rows["lead3"]["ci95"]["rougeL"] and rows["zero_shot"]["test_loss"] is not None
    md = (tmp_path / "cmp/compare.md").read_text()
    cells = next(c for line in md.splitlines() if line.startswith("| lead3 |")
                 and (c := [x.strip() for x in line.strip("|").split("|")])[1].isdigit())  # the score table's row
    assert cells[2] == "extractive" and cells[3] == "-"  # decoding, loss: a method without a model has none
    assert all("[" in c for c in cells[4:8])  # ROUGE-1/2/L/Lsum with their intervals
    assert "extractive (no model: the article's first 3 sentences)" in md
    assert "Decoding (same for every run with a model)" in md
    assert json.loads((tmp_path / "cmp/compare.json").read_text())["rows"][0]["method"] == "lead3"
    front = {e["method"]: e for e in report["frontier"]["runs"]}
    assert front["lead3"]["costs"]["train_seconds"] == 0 and front["lead3"]["costs"]["trainable_params"] == 0
    assert front["lead3"]["costs"]["peak_memory_mb"] is None  # no model: no place on the memory axis
    ans = report["answer"]
    assert [b["method"] for b in ans["facts"]["versus_baselines"]] == ["lead3"]
    t = versus(report["pairs"], "zero_shot", "lead3")  # the paired test decides the wording
    where = "no_difference" if not t["significant"] else "better" if t["diff"] > 0 else "worse"
    assert ans["facts"]["versus_baselines"][0][where] == ["zero_shot"]
    assert "Against lead3, the extractive baseline" in ans["text"]
    html = (tmp_path / "cmp/report.html").read_text()
    assert "lead3" in html and "extractive" in html


def test_experiment_runs_lead3_by_default_on_news_presets(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    news = build_config(flags=_flags(tmp_path / "x", tiny_neo, kaggle_dir, **{"data.preset": "cnndm"}))
    assert for_data(Plan(), news).methods() == ("lead3", *experiment.METHODS)
    assert for_data(Plan(with_full=True), news).methods() == ("lead3", *experiment.METHODS, "full")
    xsum = build_config(flags=_flags(tmp_path / "x", tiny_neo, kaggle_dir, **{"data.preset": "xsum"}))
    assert for_data(Plan(), xsum).methods()[0] == "lead3"
    for preset in ("samsum", "none"):
        other = build_config(flags=_flags(tmp_path / "x", tiny_neo, kaggle_dir, **{"data.preset": preset}))
        assert for_data(Plan(), other).methods() == experiment.METHODS
    assert for_data(Plan(chosen=("lora",)), news).methods() == ("lora",)  # --methods chooses

    monkeypatch.setattr(experiment, "METHODS", ("zero_shot",))
    out = tmp_path / "exp"
    report = experiment.run_experiment(build_config(flags=_flags(out, tiny_neo, kaggle_dir, **{"data.preset": "cnndm"})),
                                       Plan(eval_limit=4))
    assert [r["method"] for r in report["rows"]] == ["lead3", "zero_shot"]
    assert _read(out / "experiment.json")["methods"] == ["lead3", "zero_shot"]
    plain = experiment.run_experiment(build_config(flags=_flags(tmp_path / "plain", tiny_neo, kaggle_dir)),
                                      Plan(eval_limit=4))
    assert [r["method"] for r in plain["rows"]] == ["zero_shot"]
    capsys.readouterr()

    # again, lead3 alone: skipped, evaluated earlier, and no model loaded even to check the sources
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("lead3 loaded a model")))
    again = experiment.run_experiment(build_config(flags=_flags(out, tiny_neo, kaggle_dir, **{"data.preset": "cnndm"})),
                                      Plan(eval_limit=4, chosen=("lead3",)))
    printed = capsys.readouterr().out
    assert "finished earlier with the same settings, skipped" in printed
    assert "evaluated earlier with the same settings, skipped" in printed
    assert [r["method"] for r in again["rows"]] == ["lead3"]


def test_experiment_methods_flag_takes_lead3(tiny_neo, kaggle_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["experiment", "--methods", "lead3,zero_shot", "--model", str(tiny_neo), "--data", str(kaggle_dir),
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1",
                 "--precision", "fp32", "--max-length", "192", "--eval-limit", "3", "--decoding", "greedy",
                 "--set", "eval.max_new_tokens=4", "--set", "data.max_summary_length=48"])
    assert code == 0, capsys.readouterr().err
    record = _read(out / "experiment.json")
    assert record["methods"] == ["lead3", "zero_shot"] and record["lr"]["lead3"] is None
    assert _read(out / "lead3/eval/test/metrics.json")["n"] == 3
    assert "| lead3 |" in (out / "compare.md").read_text()


def test_plan_does_not_calibrate_lead3(tiny_neo, kaggle_dir, tmp_path, no_model):
    from sumtune.recipes.plan import format_plan, run_plan

    cfg = build_config(flags=_flags(tmp_path / "exp", tiny_neo, kaggle_dir, **{"data.preset": "cnndm"}))
    record = run_plan(cfg, Plan(chosen=("lead3",), eval_limit=5), steps=1, articles=1, progress=False)
    (p,) = record["methods"]
    assert p["method"] == "lead3" and p["trainable_params"] == 0 and p["training"] is None
    assert p["total_seconds"] == p["eval_seconds"] == p["sweep_seconds"] == 0 and p["eval_articles"] == 5
    assert record["calibration"]["per_method"]["lead3"]["step_seconds"] == []
    assert record["data_sizes"] == {"train": 24, "validation": 8, "test_evaluated": 5}
    assert "| lead3 | 0 |" in format_plan(record)


def test_lead3_summarizes_without_a_model_and_refuses_serve_and_export(tiny_neo, kaggle_dir, tmp_path, capsys,
                                                                      no_model):
    run = _lead3_run(tmp_path / "lead3", tiny_neo, kaggle_dir)
    article = tmp_path / "a.txt"
    article.write_text("(CNN) -- One thing happened. Then a second. A third one. And a fourth.\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["summarize", str(run), str(article)]) == 0
    assert capsys.readouterr().out == "One thing happened.\nThen a second.\nA third one.\n"
    for argv in (["export", str(run), str(tmp_path / "out")], ["export", str(run), str(tmp_path / "out"), "--adapter"],
                 ["serve", str(run), "--port", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "lead3" in err and "no model" in err, err
        assert not (tmp_path / "out").exists()
    from sumtune.runs import load_run

    with pytest.raises(UserError, match="lead3 run, which has no model to load"):
        load_run(run)
