"""`sumtune plan`: per-method projections printed (and as JSON), nothing written into the
experiment directory, bad input in one line; and the projection against a measured full run
of the same configuration on a tiny model."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time

import pytest
from conftest import write_kaggle_dir

from sumtune.cli import main
from sumtune.config import build_config
from sumtune.recipes.calibration import Calibration, longest_first_batches, strata
from sumtune.recipes.experiment import Plan
from sumtune.recipes.plan import _count_until, budget_steps, format_plan, project_training, run_plan


def _argv(model, data, out, *extra):
    return ["plan", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--epochs", "1",
            "--batch-size", "4", "--grad-accum", "1", "--max-length", "128", "--precision", "fp32",
            "--set", "data.max_summary_length=32", "--set", "eval.max_new_tokens=4", "--set", "method.r=4",
            "--set", "method.n_tokens=4", "--calibration-steps", "1", "--calibration-articles", "2", *extra]


def test_plan_prints_projections_and_writes_nothing(tiny_neo, kaggle_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(_argv(tiny_neo, kaggle_dir, out, "--methods", "lora,prompt_tuning,last_layers")) == 0
    printed = capsys.readouterr().out
    assert "PROJECTIONS" in printed
    # on a CPU LoRA's and prompt tuning's rows run alone: the longest micro-batch timed; the feature cache, whole steps
    assert "one step on the 4 longest training rows, each alone (+1 warm-up on the shortest row) for lora, prompt_tuning" \
        in printed
    assert "1 timed optimizer steps of 4 rows (after a warm-up step) for last_layers" in printed
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "lora", "prompt_tuning", "last_layers"}
    assert "features cached" in rows["last_layers"] and "peak RSS" in rows["lora"] and "fits" in rows["lora"]
    assert printed.strip().splitlines()[-1].startswith("nothing written")
    assert not out.exists()  # nothing in the experiment directory, not even the directory

    report = tmp_path / "plan.json"
    assert main(_argv(tiny_neo, kaggle_dir, out, "--methods", "zero_shot,lora", "--json", "--output", str(report))) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert json.loads(report.read_text()) == record and captured.err.strip().endswith(f"wrote {report}")
    zero, lora = record["methods"]
    assert zero["training"] is None and zero["trainable_params"] == 0 and zero["eval_articles"] == 8
    assert lora["training"]["steps"] == 6 and lora["trainable_params"] > 0  # 24 rows / 4
    assert record["kind"].startswith("projection") and record["calibration"]["optimizer_steps"] == 1
    assert not out.exists()


def test_plan_counts_bertscore_in_the_scoring(tiny_neo, kaggle_dir, tmp_path, capsys, monkeypatch):
    """With eval.metrics [rouge, bertscore] the calibration scores its summaries with BERTScore too
    (its model loaded once, as evaluate loads it), so the projected scoring includes it."""
    from sumtune.recipes import evaluate
    from sumtune.tiny import build_tiny_encoder, synthetic_news

    encoder = build_tiny_encoder(tmp_path / "roberta", [r["article"] for r in synthetic_news(40, seed=3)], layers=2)
    real, calls = evaluate.bertscore_per_example, []

    def slow(*a, **k):  # a scorer that takes 0.5 s a call, to see it in the projection
        calls.append(len(a[1]))
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "bertscore_per_example", slow)
    bert = ["--set", "eval.metrics=[rouge,bertscore]", "--set", f"eval.bertscore_model={encoder}",
            "--set", "eval.bertscore_layers=2"]
    assert main(_argv(tiny_neo, kaggle_dir, tmp_path / "exp", "--methods", "lora", "--json", *bert)) == 0
    lora, = json.loads(capsys.readouterr().out)["methods"]
    assert len(calls) == 2 and calls[0] == calls[1] > 0  # the set-up call, then the timed one, on the decoded articles
    assert lora["eval_score_seconds"] >= 0.5 * lora["eval_articles"] / calls[0]


@pytest.mark.parametrize("extra, expected", [
    (["--calibration-steps", "0"], "--calibration-steps and --calibration-articles must be >= 1"),
    (["--lr", "1e-3", "--sweep-lr"], "--lr fixes one rate"),
    (["--methods", "lora,nope"], "unknown method 'nope'"),
])
def test_plan_bad_input_is_one_line(tiny_neo, kaggle_dir, tmp_path, capsys, extra, expected):
    assert main(_argv(tiny_neo, kaggle_dir, tmp_path / "exp", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert not (tmp_path / "exp").exists()


def test_a_method_out_of_memory_is_flagged_and_the_others_projected(tiny_neo, kaggle_dir, tmp_path, monkeypatch,
                                                                    capsys):
    import sumtune.recipes.calibrate as calibrate
    from sumtune.fastpath.features import CachedHeadLoss

    real = calibrate.optimizer_step

    def step_or_oom(accelerator, model, optimizer, scheduler, loss_fn, *args):
        if isinstance(loss_fn, CachedHeadLoss):  # head-only last_layers runs out of CPU memory
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(accelerator, model, optimizer, scheduler, loss_fn, *args)

    monkeypatch.setattr(calibrate, "optimizer_step", step_or_oom)
    assert main(_argv(tiny_neo, kaggle_dir, tmp_path / "exp", "--methods", "lora,last_layers", "--json")) == 0
    lora, last = json.loads(capsys.readouterr().out)["methods"]
    assert lora["fits"] == "fits" and lora["training"]["step_seconds"] > 0
    assert last["fits"] == "does not fit" and "out of memory" in last["error"] and last["training"] is None


def test_step_counts_follow_the_trainer_schedule():
    """Validations at each epoch end and every eval_steps; checkpoints at epoch ends and every
    save_steps but not at the last step (recipes/train.py); the feature cache's later epochs."""
    assert _count_until(10, 4, {5, 10}) == 4  # 4, 5, 8, 10
    assert _count_until(9, 0, {5, 10}) == 1
    cfg = build_config(flags={"train.epochs": 3, "train.batch_size": 2, "train.grad_accum": 2,
                              "train.save_steps": 2, "train.eval_steps": 0})
    cal = Calibration("last_layers", True, step_seconds=[2.0, 1.0, 3.0], cached_step_seconds=[0.5, 0.5],
                      val_batch_seconds=[1.0], cached_val_batch_seconds=[0.25], val_batch_tokens=[10],
                      val_pass_tokens=20, save_seconds=0.5,
                      checkpoint_seconds=0.1, n_train=10, n_val=4)
    p = project_training(cal, cfg)  # 3 steps an epoch, 9 steps
    assert p.steps == 9 and p.step_seconds == 3 * 2.0 + 6 * 0.5
    assert p.validations == 3 and p.validation_seconds == 2 * 1.0 + 2 * (2 * 0.25) + 3 * 0.5
    assert p.checkpoints == 5  # steps 2, 3, 4, 6, 8 (epoch ends 3 and 6; not 9)
    assert project_training(cal, cfg, steps=4).steps == 4  # a budget's step count plugs in


def test_validations_count_the_decoding_they_do():
    """Selecting by ROUGE decodes eval.select_samples rows a validation; a tracker with tables (by
    loss) decodes train.log_predictions rows; no tracker, or log_predictions 0, none."""
    cal = Calibration("lora", True, step_seconds=[1.0], val_batch_seconds=[1.0], n_train=8, n_val=40,
                      decode_batch_seconds=[3.0, 1.0], articles_decoded=4)  # 1 s an article
    flags = {"train.epochs": 2, "train.batch_size": 4, "train.grad_accum": 2}  # 1 step an epoch, 2 validations
    base = project_training(cal, build_config(flags=flags)).validation_seconds

    def extra(**keys) -> float:
        return project_training(cal, build_config(flags={**flags, **keys})).validation_seconds - base

    assert extra(**{"train.select_by": "rougeL", "eval.select_samples": 16}) == 2 * 16
    assert extra(**{"train.report_to": ["mlflow"], "train.log_predictions": 4}) == 2 * 4
    assert extra(**{"train.report_to": ["mlflow"], "train.log_predictions": 0}) == 0
    assert extra(**{"train.select_by": "rougeL", "eval.select_samples": 100}) == 2 * 40  # capped by the rows


def test_a_seconds_budget_projects_the_step_that_reaches_it():
    """The trainer stops after the step at which the budget is reached: the cold first epoch at
    its rate, the cached later ones at theirs, capped by the configured steps."""
    def steps(seconds: float) -> int | None:
        cfg = build_config(flags={"train.epochs": 3, "train.batch_size": 2, "train.grad_accum": 2,
                                  "train.budget_seconds": seconds})
        return budget_steps(Calibration("last_layers", True, step_seconds=[2.0], cached_step_seconds=[0.5],
                                        n_train=10), cfg)  # 3 steps an epoch at 2 s, then 0.5 s
    assert steps(3.9) == 2 and steps(4.0) == 2 and steps(6.0) == 3
    assert steps(6.1) == 4 and steps(7.0) == 5 and steps(100.0) == 9
    assert budget_steps(Calibration("lora", True, step_seconds=[1.0], n_train=10), build_config()) is None


def test_strata_are_evenly_spaced_longest_first():
    batches = longest_first_batches([3, 9, 1, 7, 5, 2], 2)
    assert batches == [[1, 3], [4, 0], [5, 2]]
    assert strata(batches, 1) == [[4, 0]] and strata(batches, 3) == batches and strata(batches, 9) == batches


def _projected_and_measured(model, data, out) -> dict[str, tuple[float, float]]:
    """(projected, measured) per figure: `run_plan`, then the same configuration trained and evaluated."""
    from sumtune.recipes.evaluate import evaluate_run
    from sumtune.recipes.train import train

    cfg = build_config(flags={
        "model.name": str(model), "data.source": str(data), "output_dir": str(out),
        "method.name": "lora", "method.r": 4, "train.epochs": 1, "train.batch_size": 2, "train.grad_accum": 1,
        "train.lr": 1e-3, "train.precision": "fp32", "data.max_length": 128, "data.max_summary_length": 32,
        "eval.batch_size": 4, "eval.max_new_tokens": 32, "eval.min_new_tokens": 32})
    record = run_plan(cfg, Plan(chosen=("lora",)), steps=12, articles=8, progress=False)
    (p,) = record["methods"]
    run = train(cfg)
    t0 = time.perf_counter()
    metrics = evaluate_run(run, "test", overrides=vars(cfg.eval))
    eval_wall = time.perf_counter() - t0
    results = json.loads((run / "results.json").read_text())
    assert p["training"]["steps"] == results["steps"] == 48 and p["eval_articles"] == metrics["n"] == 32
    assert results["peak_memory_kind"] == p["memory_kind"] and "lora" in format_plan(record)
    return {"train_seconds": (p["training"]["step_seconds"], results["train_seconds"]),
            "evaluation wall": (p["eval_seconds"], eval_wall),
            "generation_seconds": (p["eval_decode_seconds"], metrics["generation_seconds"]),
            "peak RSS": (p["train_peak_memory_mb"], results["peak_memory_mb"])}


@pytest.mark.slow  # three trainings and evaluations, ~35 s; bench/plan_accuracy.py is the full-size check
def test_projection_matches_a_measured_run(tiny_neo, tmp_path):
    """Projected against measured, same configuration, same process, one after the other:
    - training: results.json's train_seconds (optimizer steps only) against the projected
      optimizer-step seconds (the trainer's 48 steps x the median of 12 calibrated steps), within 25%;
    - evaluation: `evaluate_run`'s wall time (loading, loss, decoding, scoring, writing) against
      the projected evaluation seconds, and metrics.json's generation_seconds against the
      projected decoding seconds, within 25%;
    - peak memory: results.json's peak RSS against the projected training peak, within 15%.
    Every summary is held at 32 tokens (min = max new tokens): the tiny random model's stopping
    is noise, and which articles it would stop early on is not what the projection is tested for.
    A machine shared with other work can change speed between the calibration and the run (seen:
    the same decoding batch re-timed 40% apart under a load of 13 on 2 cores), so
    three attempts are made and each figure's median projected/measured ratio is held to the bound
    (sub-second passes on a fast, quiet 2-core machine were also seen 30-50% apart run to run, in
    either direction; inside the whole suite one median came out 0.71 for decoding): a systematic
    error shows in the median, the noise of one attempt does not.
    Each attempt runs in a fresh process, as `sumtune plan` and the runs it projects do: after
    the rest of the suite in one process, decoding was measured ~40% slower than projected in
    every attempt (not so alone), state of earlier tests that no user's `plan` inherits."""
    data = write_kaggle_dir(tmp_path / "data", sizes=(96, 8, 32))
    bounds = {"train_seconds": 0.25, "evaluation wall": 0.25, "generation_seconds": 0.25, "peak RSS": 0.15}
    ratios: dict[str, list[float]] = {k: [] for k in bounds}  # projected / measured, per attempt
    for attempt in range(3):
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process, as `sumtune plan` runs in
            figures = pool.apply(_projected_and_measured, (tiny_neo, data, tmp_path / f"exp{attempt}"))
        for k, (proj, meas) in figures.items():
            ratios[k].append(proj / meas)
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    missed = {k: m for k, m in medians.items() if abs(m - 1) >= bounds[k]}
    assert not missed, f"median projected/measured off by more than {bounds}: {missed} (each attempt: {ratios})"
