"""`sumtune demo`: real CNN stories shipped in the package, the real model's demo configured as
README says, and the tiny random model's smoke demo (which marks itself, so no winner is named)."""

from __future__ import annotations

import csv
import json

import pytest

from sumtune.recipes import demo
from sumtune.recipes.experiment import Plan


def _rows(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_real_news_sample_is_packaged_small_and_cited():
    sizes = {s: len(_rows(demo.DEMO_NEWS / f"{s}.csv")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 64, "validation": 16, "test": 16}
    assert sum(p.stat().st_size for p in demo.DEMO_NEWS.iterdir()) < 2_000_000
    row = _rows(demo.DEMO_NEWS / "test.csv")[0]
    assert set(row) == {"id", "article", "highlights"} and len(row["article"]) > 500
    readme = (demo.DEMO_NEWS / "README.md").read_text()
    assert "abisee/cnn_dailymail" in readme and "test rows 0–15" in readme
    assert demo.DEMO_DATA.is_file() and demo.DEMO_DATA.stat().st_size > 10_000  # the tiny demo's


def test_real_demo_trains_every_method_for_the_same_seconds(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run_experiment", lambda cfg, plan: seen.update(cfg=cfg, plan=plan))
    monkeypatch.setattr(demo, "ensure_named_model", lambda name: seen.setdefault("model", name) and
                        tmp_path / "model.gguf")
    demo.run_demo(tmp_path / "demo")
    cfg, plan = seen["cfg"], seen["plan"]
    assert seen["model"] == demo.DEMO_MODEL and cfg.model.name == str(tmp_path / "model.gguf")
    from sumtune.recipes.experiment import for_data

    assert for_data(plan, cfg).methods() == ("lead3", "zero_shot", "prompt_tuning", "lora", "last_layers")
    assert plan.demo is False
    assert cfg.train.budget_seconds == demo.DEMO_BUDGET_SECONDS and plan.eval_limit is None
    assert cfg.data.max_test_samples == demo.DEMO_TEST_ROWS and "three short sentences" in cfg.data.instruction
    assert cfg.data.prompt_format == "chat" and cfg.data.source == str(demo.DEMO_NEWS)


def test_the_tiny_demo_marks_itself_so_the_report_names_no_winner(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run_experiment", lambda cfg, plan: seen.setdefault("plan", plan))
    monkeypatch.setattr(demo, "run_plan", lambda *a, **k: {})
    monkeypatch.setattr(demo, "print_plan", lambda *a, **k: None)
    demo.run_demo(tmp_path / "demo", tiny=True)
    assert seen["plan"].demo is True and Plan().demo is False


@pytest.mark.slow
def test_tiny_demo_runs_offline(tmp_path, capsys):
    report = demo.run_demo(tmp_path / "demo", tiny=True)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("NOTE: this demo trains a tiny random model")
    assert demo.STUDY_COMMAND in printed.splitlines()[0]
    assert printed.index("PROJECTIONS") < printed.index("wrote ") < printed.index("== zero_shot")  # the plan first
    plan = json.loads((tmp_path / "demo/plan.json").read_text())
    assert [m["method"] for m in plan["methods"]] == ["zero_shot", "prompt_tuning", "lora", "last_layers", "full"]
    methods = ["zero_shot", "prompt_tuning", "lora", "last_layers", "full"]
    assert list(dict.fromkeys(r["method"] for r in report["rows"])) == methods  # 2 seeds: a method's runs together
    assert all(r["evaluated"] for r in report["rows"])
    lines = printed.rstrip().splitlines()
    assert lines[-1] == str(tmp_path / "demo/report.html") and lines[-3].startswith("plot: ")
    assert json.loads((tmp_path / "demo/experiment.json").read_text())["demo"] is True
