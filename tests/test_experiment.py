"""`experiment`: every method trained, evaluated and compared into one directory; re-running
skips what is finished; the lr sweep keeps each method's best rate by validation loss."""

from __future__ import annotations

import json

import pytest

from sumtune.config import build_config, load_run_config
from sumtune.recipes import experiment
from sumtune.recipes.experiment import Plan


def _cfg(out, model_dir, data_dir, **sets):
    flags = {"model.name": str(model_dir), "data.source": str(data_dir), "output_dir": str(out),
             "train.epochs": 1, "train.batch_size": 4, "train.grad_accum": 1, "train.precision": "fp32",
             "data.max_length": 256, "data.max_summary_length": 48, "eval.max_new_tokens": 8,
             "method.n_tokens": 4, "method.r": 4}
    flags.update(sets)
    return build_config(flags=flags)


def _read(path):
    return json.loads(path.read_text())


def test_experiment_runs_every_method_and_resumes(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    report = experiment.run_experiment(_cfg(out, tiny_neo, kaggle_dir), Plan(eval_limit=4))
    methods = ["zero_shot", "prompt_tuning", "lora", "last_layers"]
    assert [r["method"] for r in report["rows"]] == methods
    for m in methods:
        assert _read(out / m / "results.json")["finished"] is True
        metrics = _read(out / m / "eval/test/metrics.json")
        assert metrics["n"] == 4 and 0 <= metrics["rougeL"] <= 1
    assert all(r["evaluated"] for r in report["rows"])
    assert (out / "compare.md").is_file() and len(report["plots"]) == 4
    record = _read(out / "experiment.json")
    assert record["demo"] is False and report["answer"]["facts"]["verdict"] != "demo"
    lrs = record["lr"]
    middle = {m: experiment.LR_GRID[m][len(experiment.LR_GRID[m]) // 2] for m in ("prompt_tuning", "lora")}
    assert lrs["prompt_tuning"] == middle["prompt_tuning"] > lrs["lora"] == middle["lora"]
    printed = capsys.readouterr().out
    assert "| lora |" in printed and "loss_curves.png" in printed
    assert report["answer"]["text"] in printed and "## Cost–quality frontier" in printed

    # a second run trains and evaluates nothing again
    stamps = {m: (out / m / "eval/test/metrics.json").stat().st_mtime_ns for m in methods}

    def no_training(*a, **k):
        raise AssertionError("finished runs must not be trained again")

    monkeypatch.setattr(experiment, "train", no_training)
    monkeypatch.setattr(experiment, "evaluate_run", no_training)
    experiment.run_experiment(_cfg(out, tiny_neo, kaggle_dir), Plan(eval_limit=4))
    assert stamps == {m: (out / m / "eval/test/metrics.json").stat().st_mtime_ns for m in methods}
    assert "finished earlier with the same settings, skipped" in capsys.readouterr().out


def test_sweep_keeps_the_best_lr_by_validation_loss(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("lora",))
    out = tmp_path / "exp"
    experiment.run_experiment(_cfg(out, tiny_neo, kaggle_dir, **{"train.epochs": 2}),
                              Plan(sweep_lr=True, eval_limit=2, lr_grid={"lora": (1e-5, 3e-2)}))
    record = _read(out / "experiment.json")
    swept = sorted(float(k) for k in record["sweep"]["lora"]["losses"])
    assert {1e-5, 3e-2} <= set(swept)
    losses = {lr: _read(out / "sweep/lora" / f"lr{lr:g}" / "results.json")["best_val_loss"] for lr in swept}
    assert losses[1e-5] != losses[3e-2]
    best = min(losses, key=losses.get)
    assert record["lr"]["lora"] == best
    assert record["sweep"]["lora"]["losses"] == {f"{lr:g}": v for lr, v in losses.items()}
    assert record["sweep"]["lora"]["seconds"] > 0
    assert load_run_config(out / "lora").train.lr == best
    # the sweep's short runs: one epoch each; the main run: the full budget
    assert _read(out / "sweep/lora/lr0.03/results.json")["epochs_run"] == 1
    assert _read(out / "lora/results.json")["epochs_run"] == 2


def test_a_started_run_is_continued_not_refused(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("lora",))
    out = tmp_path / "exp"
    cfg = _cfg(out, tiny_neo, kaggle_dir)
    experiment.run_experiment(cfg, Plan(eval_limit=2))
    (out / "lora/results.json").unlink()  # as if killed before the end: the trainer refuses a fresh start there
    old_eval = (out / "lora/eval/test/metrics.json").stat().st_mtime_ns
    experiment.run_experiment(cfg, Plan(eval_limit=2))
    assert _read(out / "lora/results.json")["finished"] is True
    assert (out / "lora/eval/test/metrics.json").stat().st_mtime_ns > old_eval  # retrained, so evaluated again


def test_every_method_is_checked_before_the_first_trains(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    """A soft prompt that cannot fit the model's positions is refused before LoRA trains, by
    experiment and by plan alike."""
    from sumtune.errors import UserError
    from sumtune.recipes.plan import run_plan

    monkeypatch.setattr(experiment, "METHODS", ("lora", "prompt_tuning"))

    def no_training(*a, **k):
        raise AssertionError("nothing may train before every method is checked")

    monkeypatch.setattr(experiment, "train", no_training)
    monkeypatch.setattr("sumtune.recipes.calibrate.Calibrator.calibrate", no_training)
    out = tmp_path / "exp"
    cfg = _cfg(out, tiny_neo, kaggle_dir, **{"data.max_length": 1024})
    for run in (experiment.run_experiment, run_plan):
        with pytest.raises(UserError, match="1024 \\+ 4 soft-prompt tokens exceeds the 1024 positions"):
            run(cfg, Plan(eval_limit=2))
    assert not out.exists()


def test_choose_decoding_on_validation_rows(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    """--choose-decoding scores each preset on validation rows (never test), decodes the test rows
    with the best by ROUGE-L, records the choice, and reuses it when nothing changed."""
    from sumtune.recipes import evaluate

    out = tmp_path / "exp"
    splits: list[str] = []
    real = evaluate.evaluate_run

    def spy(run, split="test", *a, **k):
        splits.append(split)
        return real(run, split, *a, **k)

    monkeypatch.setattr(experiment, "evaluate_run", spy)
    plan = Plan(eval_limit=2, chosen=("zero_shot",), decodings=("greedy", "xsum"), choose_rows=3)
    experiment.run_experiment(_cfg(out, tiny_neo, kaggle_dir), plan)
    assert splits == ["validation", "validation", "test"]
    choice = _read(out / "zero_shot/eval/decoding_choice.json")
    scores = {n: c["rougeL"] for n, c in choice["candidates"].items()}
    assert choice["split"] == "validation" and choice["rows"] == 3 and set(scores) == {"greedy", "xsum"}
    assert all(c["n"] == 3 for c in choice["candidates"].values())
    assert choice["chosen"] == max(["greedy", "xsum"], key=lambda n: scores[n])
    test = _read(out / "zero_shot/eval/test/metrics.json")
    assert test["decoding"]["preset"] == choice["chosen"] and test["n"] == 2
    assert _read(out / "experiment.json")["decoding_choice"][str(out / "zero_shot")]["chosen"] == choice["chosen"]
    assert "decoding chosen on validation" in capsys.readouterr().out
    splits.clear()
    experiment.run_experiment(_cfg(out, tiny_neo, kaggle_dir), plan)  # unchanged: nothing decoded again
    assert splits == []
