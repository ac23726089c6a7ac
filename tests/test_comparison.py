"""A comparison you can publish: each run's own peak memory, explicit evaluation sizes,
intervals in metrics.json, seeds with mean ± sd, pairwise tests and a report that says what
every figure is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sumtune.config import build_config
from sumtune.metrics import ROUGE_KEYS
from sumtune.recipes import experiment
from sumtune.recipes.experiment import Plan


def _flags(out, model_dir, data, **extra):
    flags = {"model.name": str(model_dir), "data.source": str(data), "output_dir": str(out),
             "train.batch_size": 4, "train.grad_accum": 1, "train.precision": "fp32", "data.max_length": 192,
             "data.max_summary_length": 48, "eval.max_new_tokens": 6, "method.prompt_tuning.n_tokens": 4, "method.lora.r": 4,
             "train.max_steps": 3}
    flags.update(extra)
    return flags


def _read(path):
    return json.loads(path.read_text())


def _cli(*argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sumtune.cli", *argv], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_each_rows_peak_memory_is_its_own(tiny_neo, kaggle_dir, tmp_path):
    """experiment in one process: each run's peak is within 15% of the same run alone in a fresh
    process (before, each row reported the maximum over every earlier run)."""
    common = ["--model", str(tiny_neo), "--data", str(kaggle_dir), "--max-steps", "3", "--precision", "fp32",
              "--batch-size", "4", "--grad-accum", "1", "--max-length", "192", "--set", "data.max_summary_length=48",
              "--set", "method.lora.r=4", "--set", "method.prompt_tuning.n_tokens=4", "--set", "train.lr=3e-4"]
    _cli("experiment", *common, "--output-dir", str(tmp_path / "exp"), "--eval-limit", "1", "--decoding", "greedy",
         "--set", "eval.max_new_tokens=2")
    for method in ("prompt_tuning", "lora", "last_layers"):  # trained after others in the same process
        _cli("train", "--method", method, *common, "--output-dir", str(tmp_path / f"alone-{method}"))
        shared = _read(tmp_path / "exp" / method / "results.json")
        alone = _read(tmp_path / f"alone-{method}" / "results.json")
        assert shared["peak_memory_kind"] == alone["peak_memory_kind"] == "peak RSS"
        assert shared["peak_memory_mb"] == pytest.approx(alone["peak_memory_mb"], rel=0.15), method


def test_results_separate_step_validation_and_checkpoint_time(tiny_neo, kaggle_dir, tmp_path):
    from sumtune.recipes.train import train

    run = train(build_config(flags=_flags(tmp_path / "run", tiny_neo, kaggle_dir, **{"method.name": "lora",
                                                                                      "train.save_steps": 1})))
    res = _read(run / "results.json")
    for key in ("train_seconds", "validation_seconds", "checkpoint_seconds", "wall_seconds"):
        assert res[key] > 0, key
    assert res["train_seconds"] + res["validation_seconds"] + res["checkpoint_seconds"] <= res["wall_seconds"] * 1.001
    assert res["data_sizes"] == {"train": 24, "validation": 8, "test": 8}


def test_evaluate_limit_ignores_the_runs_cap_and_records_intervals(tiny_neo, kaggle_dir, tmp_path):
    from method_utils import make_run

    from sumtune.recipes.evaluate import evaluate_run

    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora",
                       sets=(f"data.source={kaggle_dir}", "method.r=4", "data.max_eval_samples=4"))
    fast = {"max_new_tokens": 6, "batch_size": 4}
    capped = evaluate_run(run, "test", limit=None, overrides=fast)
    assert capped["n"] == 4  # the run's cap
    # what the report projects a full evaluation from: the split's size and the measured seconds
    assert capped["split_rows"] == 8 and capped["loss_seconds"] > 0 and capped["generation_seconds"] > 0
    m = evaluate_run(run, "test", limit=6, overrides=fast)
    assert m["n"] == 6 and m["limit"] == 6  # --limit 6 gives 6 rows although the run capped at 4
    assert evaluate_run(run, "test", limit=0, overrides=fast)["n"] == 8  # 0: the whole split
    for key in ROUGE_KEYS:
        low, high = m["ci95"][key]
        assert low <= m[key] <= high
    assert m["bootstrap"]["resamples"] >= 1000 and m["sentence_splitter"].startswith("pysbd")
    assert m["decoding"]["label"] == "greedy*" and m["decoding"]["modified"] == ["max_new_tokens"] and m["mean_reference_tokens"] > 0
    rows = [json.loads(x) for x in (run / "eval/test/predictions.jsonl").read_text().splitlines()]
    assert all(set(ROUGE_KEYS) <= set(r) and r["prediction_tokens"] >= 0 for r in rows)


def test_max_sentences_keeps_the_first_sentences():
    from sumtune.decoding.summaries import first_sentences

    assert first_sentences("Mr. Smith went to Washington. He met the U.S. president. Then he left.", 2) == \
        "Mr. Smith went to Washington.\nHe met the U.S. president."


def test_seeds_give_runs_per_method_and_mean_sd_in_the_report(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("zero_shot", "lora", "last_layers"))
    out = tmp_path / "exp"
    report = experiment.run_experiment(build_config(flags=_flags(out, tiny_neo, kaggle_dir,
                                                                 **{"data.max_eval_samples": 4})), Plan(seeds=2))
    assert (out / "lora").is_dir() and (out / "lora-seed43").is_dir() and (out / "last_layers-seed43").is_dir()
    assert not (out / "zero_shot-seed43").exists()  # nothing trains: one run
    assert [r["method"] for r in report["rows"]].count("lora") == 2

    def ids(run):
        return [json.loads(x)["id"] for x in (out / run / "eval/test/predictions.jsonl").read_text().splitlines()]

    assert ids("lora") == ids("lora-seed43") == ids("zero_shot")  # every seed scored on the same capped rows
    seeds = {s["method"]: s for s in report["seeds"]}
    assert seeds["lora"]["seeds"] == [42, 43] and seeds["lora"]["rougeL"]["sd"] >= 0
    pairs = {(p["a"], p["b"]) for p in report["pairs"]}
    assert ("zero_shot", "lora") in pairs and ("lora", "last_layers") in pairs
    for p in report["pairs"]:
        assert p["n"] == 4 and {"diff", "low", "high", "p_value", "p_holm", "significant"} <= set(p["rougeL"])
    md = (out / "compare.md").read_text()
    assert "## Across seeds (mean ± sd)" in md and " ± " in md
    assert "## Pairwise differences" in md and "Holm" in md
    assert "peak RSS" in md and "evaluated on the test split, n = 4" in md
    assert "(train 24, validation 4 rows in training); evaluated on the test split, n = 4" in md
    assert "Decoding (same for every run):** greedy* (beams 1, no n-gram ban," in md
    # example summaries: the first two documents, the reference and every run's own summary beside it
    first = [json.loads(x) for x in (out / "lora/eval/test/predictions.jsonl").read_text().splitlines()][:2]
    shown = report["examples"]
    assert [e["id"] for e in shown] == [str(r["id"]) for r in first] and "## Example summaries (test split" in md
    assert shown[0]["summaries"]["lora-seed43"] == json.loads(
        (out / "lora-seed43/eval/test/predictions.jsonl").read_text().splitlines()[0])["prediction"]
    assert set(shown[0]["summaries"]) == {r["run"] for r in report["rows"]}
    assert f"- *reference*: {' / '.join(first[0]['reference'].splitlines())}" in md


def test_report_marks_an_lr_at_the_grid_edge_and_the_sweep_cost(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("lora",))
    out = tmp_path / "exp"
    cfg = build_config(flags=_flags(out, tiny_neo, kaggle_dir, **{"train.max_steps": 24}))
    report = experiment.run_experiment(cfg, Plan(eval_limit=2, sweep_lr=True, lr_grid={"lora": (1e-6, 1e-5)}))
    sweep = _read(out / "experiment.json")["sweep"]["lora"]
    # the largest rate wins on a tiny model at these rates: the grid was extended one step up
    assert sweep["edge"] in ("high", None) and len(sweep["losses"]) == 3 and "0.0001" in sweep["losses"]
    row = report["rows"][0]
    assert row["sweep_seconds"] == pytest.approx(sweep["seconds"]) and row["sweep_seconds"] > 0
    md = (out / "compare.md").read_text()
    if sweep["edge"]:
        assert "(at high grid edge)" in md
