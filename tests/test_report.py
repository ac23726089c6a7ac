"""`compare`: the table (Markdown + JSON), a row that says "not evaluated", and four real PNGs."""

from __future__ import annotations

import json

import pytest
from method_utils import make_run

from sumtune.io import atomic_write_json
from sumtune.report import compare_runs, loss_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, model_dir, method, trainable, evaluated, epochs=3):
    """A run directory holding what the trainer and evaluate write (see DESIGN.md's run contract)."""
    run, *_ = make_run(tmp_path / method, model_dir, method, sets=("method.lora.r=4",))
    atomic_write_json(run / "results.json", {
        "method": method, "trainable_params": trainable, "total_params": 1000, "train_seconds": 12.0 * epochs,
        "epochs_run": epochs, "best_val_loss": 2.5, "peak_memory_mb": 300.0, "tokens_per_s": 950.0,
        "early_stopped": False, "finished": True})
    events = []
    for e in range(1, epochs + 1):
        events += [{"step": 2 * e - 1, "epoch": e - 0.5, "split": "train", "loss": 4.0 - e},
                   {"step": 2 * e, "epoch": e, "split": "train", "loss": 3.8 - e},
                   {"step": 2 * e, "epoch": e, "split": "validation", "loss": 3.9 - e}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in events))
    if evaluated:
        atomic_write_json(run / "eval/test/metrics.json", {
            "loss": 2.6, "rouge1": 0.30, "rouge2": 0.10, "rougeL": 0.20, "rougeLsum": 0.25, "n": 8})
    return run


def test_compare_writes_tables_and_plots(tiny_neo, tmp_path, capsys):
    runs = [_run(tmp_path, tiny_neo, "zero_shot", 0, True, epochs=0),
            _run(tmp_path, tiny_neo, "lora", 40, True),
            _run(tmp_path, tiny_neo, "last_layers", 500, False)]
    report = compare_runs(runs, tmp_path / "cmp")
    printed = capsys.readouterr().out

    md = (tmp_path / "cmp/compare.md").read_text()
    assert ("| lora | lora | LoRA r=4 α=16 on attention+MLP | 42 | 0.0003 | 40 (4%) | 3 | 36.0 | - | - "
            "| 300 (peak RSS) | 950 | 2.5000 |") in md
    assert "| lora | 8 | - | 2.6000 | 30.00 | 10.00 | 20.00 | 25.00 | - / - |" in md
    assert "| last_layers | last_layers | LM head (untied copy) | 42 | 0.0003 | 500 (50%) |" in md
    assert "| last_layers | - | - | not evaluated |" in md
    assert "| zero_shot | zero_shot | nothing (base model) | 42 | - | 0 (0%) | 0 | 0.0 |" in md
    assert md.split("![")[0].strip() in printed  # the tables are printed

    saved = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = {r["method"]: r for r in saved["rows"]}
    assert rows["lora"]["rougeL"] == 0.20 and rows["lora"]["trainable_pct"] == pytest.approx(4.0)
    assert rows["last_layers"]["evaluated"] is False and rows["last_layers"]["rouge1"] is None

    assert len(saved["plots"]) == 4 and saved["plots"][-1].endswith("frontier.png")
    for p in saved["plots"]:
        data = open(p, "rb").read()
        assert data.startswith(PNG) and len(data) > 10_000
        assert p in printed


def test_compare_defaults_to_the_common_parent_and_labels_runs_apart(tiny_neo, tmp_path):
    runs = [_run(tmp_path / "a", tiny_neo, "lora", 40, False), _run(tmp_path / "b", tiny_neo, "lora", 40, True)]
    report = compare_runs(runs)
    assert (tmp_path / "compare.md").is_file() and (tmp_path / "compare.json").is_file()
    assert [r["run"] for r in report["rows"]] == ["a/lora", "b/lora"]


def test_loss_curves_per_epoch(tiny_neo, tmp_path):
    run = _run(tmp_path, tiny_neo, "lora", 40, False, epochs=2)
    train, val = loss_curves(run)
    assert train == pytest.approx({1: 2.9, 2: 1.9})  # mean of the epoch's logged losses
    assert val == pytest.approx({1: 2.9, 2: 1.9})
