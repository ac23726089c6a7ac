"""The cost-quality frontier (Pareto marks per cost axis, projected evaluation cost) and the
answer paragraph (cost tiers, Holm-corrected significance, the demo's refusal to name a
winner), on hand-made rows whose per-document scores go through the real paired bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sumtune.io import atomic_write_json
from sumtune.report.answer import DEMO_TEXT, answer, is_demo, tiers
from sumtune.report.frontier import frontier, frontier_markdown, marks, pareto, projected_eval, projected_text
from sumtune.report.stats import pairwise

N_DOCS = 60


def test_pareto_rule_and_ties():
    #          cheap/low  dominated   tie A     tie B     same score, costlier  cheaper, better
    points = [(0, 0.10), (20, 0.25), (10, 0.30), (10, 0.30), (12, 0.30), (5, 0.20)]
    assert pareto(points) == [True, False, True, True, False, True]
    assert pareto([(1, 0.2), (1, 0.1)]) == [True, False]  # same cost, lower score
    assert pareto([(3, 0.5)]) == [True] and pareto([]) == []
    # more expensive and better is never dominated by a cheaper, worse run
    assert pareto([(1, 0.1), (100, 0.9)]) == [True, True]


def _row(run, method, score, seconds, params, memory=300.0, kind="peak RSS", evaluated=True, **extra):
    return {"run": run, "path": str(extra.pop("path", "/nonexistent")), "method": method, "seed": extra.pop("seed", 42),
            "evaluated": evaluated, "rougeL": score if evaluated else None,
            "ci95": {"rougeL": [score - 0.01, score + 0.01]} if evaluated else None,
            "trainable_params": params, "train_seconds": seconds, "peak_memory_mb": memory,
            "peak_memory_kind": kind, "n_test": N_DOCS if evaluated else None,
            "decoding": {"label": "cnndm"} if evaluated else None, "base_as_is": method == "zero_shot", **extra}


def test_marks_per_axis_kind_and_missing_costs():
    rows = [_row("zero_shot", "zero_shot", 0.10, None, 0, memory=500.0),  # nothing trains: 0 s, whatever recorded
            _row("lora", "lora", 0.30, 50.0, 40, memory=400.0),
            _row("full", "full", 0.29, 60.0, 1000, memory=900.0),
            _row("gpu", "last_layers", 0.20, 40.0, 500, memory=100.0, kind="peak CUDA allocated"),
            _row("todo", "prompt_tuning", 0.0, 5.0, 4, evaluated=False),
            _row("old", "ia3", 0.25, None, 8, memory=None)]
    assert marks(rows, "train_seconds") == [True, True, False, True, None, None]
    assert marks(rows, "trainable_params") == [True, True, False, False, None, True]
    # lora needs less memory than zero_shot and scores higher; peak RSS and CUDA memory are not compared:
    # the GPU run's 100 MB does not dominate the RSS runs
    assert marks(rows, "peak_memory_mb") == [False, True, False, True, None, None]
    front = frontier(rows, "test")
    assert front["metric"] == "rougeL" and front["runs"][0]["costs"]["train_seconds"] == 0.0
    md = frontier_markdown(front)
    assert "| lora | lora | 42 | 30.00 [29.00, 31.00] | 50.0 | ★ | 400 (peak RSS) | ★ | 40 | ★ |" in md
    assert "| full | full | 42 | 29.00 [28.00, 30.00] | 60.0 |  | 900 (peak RSS) |  | 1,000 |  |" in md
    assert "| todo | prompt_tuning | 42 | - | 5.0 | - |" in md


def test_projected_evaluation_scales_measured_seconds_to_the_split(tmp_path):
    run = tmp_path / "lora"
    atomic_write_json(run / "eval/test/metrics.json", {
        "n": 4, "generation_seconds": 2.0, "loss_seconds": 0.5, "split_rows": 1000, "processes": 1,
        "decoding": {"label": "cnndm"}})
    p = projected_eval(_row("lora", "lora", 0.3, 1.0, 4, path=run), "test")
    assert p["seconds"] == pytest.approx(2.5 / 4 * 1000) and p["projected"] and p["includes_loss"]
    assert projected_text(p) == ("≈ 10.4 min projected for 1,000 rows (loss + decoding: 2.5 s for n = 4 decoded, "
                                 "cnndm)")
    atomic_write_json(run / "eval/test/metrics.json", {"n": 4, "generation_seconds": 2.0})  # written before
    assert projected_eval(_row("lora", "lora", 0.3, 1.0, 4, path=run), "test")["seconds"] is None


def test_tiers_are_fixed_factors_of_the_cheapest_trained_method():
    methods = [{"method": m, "train_seconds": s, "score": 0.1} for m, s in
               (("zero_shot", 0.0), ("a", 10.0), ("b", 29.9), ("c", 30.0), ("d", 95.0), ("e", None))]
    got = tiers(methods)
    assert [(t["tier"], t["methods"]) for t in got] == [(0, ["zero_shot"]), (1, ["a", "b"]), (2, ["c"]),
                                                        (3, ["d"]), (-1, ["e"])]
    assert "10 s to 30 s" in got[1]["label"] and got[-1]["label"] == "training time not recorded"


def _study(tmp_path, spec: dict, **row_extra):
    """Rows, runs and the real pairwise tests for {method: (train seconds, trainable, per-doc scores)}."""
    rows, runs = [], []
    for method, (seconds, params, scores) in spec.items():
        run = tmp_path / method
        path = run / "eval/test/predictions.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"id": f"d{i}", **dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"),
                                                                           float(s))}) + "\n"
                                for i, s in enumerate(scores)))
        rows.append(_row(method, method, float(np.mean(scores)), seconds, params, path=run, **row_extra))
        runs.append(run)
    return rows, runs, pairwise(rows, runs, "test")


def _scores(rng, base, shift, noise):
    return np.clip(base + shift + rng.normal(0, noise, base.size), 0, 1)


def test_answer_names_the_cheapest_method_no_other_beats(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.05, 0.3, N_DOCS)
    lora = _scores(rng, base, 0.10, 0.02)
    spec = {"zero_shot": (0.0, 0, base), "prompt_tuning": (10.0, 4, _scores(rng, base, 0.02, 0.02)),
            "lora": (12.0, 40, lora), "full": (100.0, 1000, _scores(rng, lora, 0.0, 0.02))}
    rows, _runs, pairs = _study(tmp_path, spec)
    ans = answer(rows, pairs, "test")
    facts = ans["facts"]
    assert [t["methods"] for t in facts["tiers"]] == [["zero_shot"], ["lora", "prompt_tuning"], ["full"]]
    tier1 = facts["tiers"][1]
    assert tier1["best"] == "lora" and tier1["vs_runner_up"]["significant"] and tier1["vs_runner_up"]["diff"] > 0
    assert tier1["vs_cheaper"]["significant"] and tier1["cheaper_best"] == "zero_shot"
    assert facts["tiers"][2]["cheaper_best"] == "lora" and not facts["tiers"][2]["vs_cheaper"]["significant"]
    assert facts["verdict"] == "recommended" and facts["recommended"] == "lora"
    assert set(facts["beats_zero_shot"]) == {"prompt_tuning", "lora", "full"}
    text = ans["text"]
    assert "For what it costs: lora" in text and "lora is significantly better than prompt_tuning" in text
    assert "the data cannot tell full and lora apart (n = 60, p = " in text
    # what the figures are: metric, split, n, decoding, seeds, the rules
    assert "ROUGE-L F1 × 100 on the test split, n = 60 documents, decoding cnndm" in text
    assert "seeds: zero_shot 42; prompt_tuning 42; lora 42; full 42" in text and "Holm" in text
    assert DEMO_TEXT not in text


def test_answer_names_no_winner_when_nothing_beats_zero_shot(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.3, N_DOCS)
    spec = {m: (s, p, _scores(rng, base, 0.0, 0.03)) for m, s, p in
            (("zero_shot", 0.0, 0), ("lora", 12.0, 40), ("prompt_tuning", 11.0, 4))}
    rows, _runs, pairs = _study(tmp_path, spec)
    ans = answer(rows, pairs, "test")
    assert ans["facts"]["verdict"] == "none_beats_zero_shot" and ans["facts"]["recommended"] is None
    assert "No trained method is significantly better than zero_shot" in ans["text"]
    assert "no winner is named" in ans["text"] and "For what it costs" not in ans["text"]
    assert "the data cannot tell" in ans["text"]
    rows, _runs, pairs = _study(tmp_path / "no_zero", {m: spec[m] for m in ("lora", "prompt_tuning")})
    assert answer(rows, pairs, "test")["facts"]["verdict"] == "no_difference"


def test_the_demo_names_no_winner_and_a_budget_is_stated(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.uniform(0.05, 0.3, N_DOCS)
    spec = {"zero_shot": (0.0, 0, base), "lora": (12.0, 40, _scores(rng, base, 0.2, 0.01))}
    rows, runs, pairs = _study(tmp_path, spec, budget={"kind": "seconds", "limit": 60})
    assert answer(rows, pairs, "test")["facts"]["verdict"] == "recommended"
    ans = answer(rows, pairs, "test", demo=True)
    assert ans["paragraphs"][0] == DEMO_TEXT and ans["facts"]["verdict"] == "demo"
    assert "meaningless" in ans["text"] and "not a finding" in ans["text"] and "For what it costs" not in ans["text"]
    assert "At an equal budget of 60 training seconds for every trained run" in ans["text"]
    assert not is_demo(None, runs)
    atomic_write_json(tmp_path / "experiment.json", {"demo": True})
    assert is_demo(None, runs) and is_demo({"demo": True}, [])


def test_answer_without_evaluations_or_per_document_scores():
    assert answer([_row("a", "lora", 0.1, 1.0, 4, evaluated=False)], [], "test")["facts"]["verdict"] == "no_runs"
    rows = [_row("zero_shot", "zero_shot", 0.1, 0.0, 0), _row("lora", "lora", 0.3, 5.0, 4)]
    ans = answer(rows, [], "test")
    assert ans["facts"]["verdict"] == "untested" and "no winner is named" in ans["text"]
