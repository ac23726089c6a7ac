"""A run is what it says it is: each case of the issue reproduced, then refused in one line or
done right - settings and content that changed under an experiment or a resume, paths that
travel, checks before anything is written, sweeps that train, and the smaller CLI promises."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from sumtune.cli import main
from sumtune.config import build_config, load_run_config
from sumtune.errors import UserError
from sumtune.recipes import experiment
from sumtune.recipes.experiment import Plan
from sumtune.runs import RunDir


def _flags(out, model_dir, data, **extra):
    flags = {"model.name": str(model_dir), "data.source": str(data), "output_dir": str(out),
             "train.batch_size": 4, "train.grad_accum": 1, "train.precision": "fp32", "data.max_length": 192,
             "data.max_summary_length": 48, "eval.max_new_tokens": 6, "method.n_tokens": 4, "method.r": 4}
    flags.update(extra)
    return flags


def _error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # progress bars may stand before the one-line error
    assert last.startswith("sumtune: error: "), err
    return last


def _train_argv(model_dir, data, out, *extra):
    return ["train", "--method", "lora", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out),
            "--batch-size", "4", "--grad-accum", "1", "--precision", "fp32", "--max-length", "192",
            "--set", "data.max_summary_length=48", "--set", "method.r=4", *extra]


# 1. experiment reuses old results after the settings change -----------------------------------


def test_experiment_refuses_changed_settings_and_overwrite_retrains(tiny_neo, tiny_gpt2, kaggle_dir, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(experiment, "METHODS", ("zero_shot", "lora"))
    out = tmp_path / "ex1"
    experiment.run_experiment(build_config(flags=_flags(out, tiny_neo, kaggle_dir, **{"train.max_steps": 4})),
                              Plan(eval_limit=2))
    changed = build_config(flags=_flags(out, tiny_gpt2, kaggle_dir, **{"train.max_steps": 6}))
    with pytest.raises(UserError) as e:
        experiment.run_experiment(changed, Plan(eval_limit=2))
    msg = str(e.value)
    assert "\n" not in msg and "--overwrite" in msg and "model.name" in msg and "zero_shot" in msg

    experiment.run_experiment(changed, Plan(eval_limit=2, overwrite=True))
    assert load_run_config(out / "lora").model.name == str(tiny_gpt2)
    assert json.loads((out / "lora/results.json").read_text())["steps"] == 6
    assert "starting afresh" in capsys.readouterr().out


def test_experiment_refuses_data_whose_content_changed(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("zero_shot",))
    out = tmp_path / "ex"
    cfg = build_config(flags=_flags(out, tiny_neo, kaggle_dir))
    experiment.run_experiment(cfg, Plan(eval_limit=2))
    rows = list(csv.DictReader(open(kaggle_dir / "train.csv", encoding="utf-8")))
    with open(kaggle_dir / "train.csv", "w", newline="", encoding="utf-8") as f:  # same path, fewer rows
        w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
        w.writeheader()
        w.writerows(rows[:12])
    with pytest.raises(UserError, match="data content"):
        experiment.run_experiment(cfg, Plan(eval_limit=2))



# The `method:` section as sumtune wrote it before each method had its own (every method's keys), copied
# from a LoRA run of the real study (runs/study_smollm2_cnndm/lora/config.yaml, written 2026-05).
FLAT_METHOD = """\
method:
  name: lora
  n_tokens: 20
  init_text: 'SUMMARIZE the following news article in a few sentences:'
  init_random: false
  prefix_projection: false
  encoder_hidden: 0
  encoder: mlp
  r: 8
  alpha: 16
  dropout: 0.05
  target_modules: []
  use_dora: false
  use_rslora: false
  quantize: none
  last_k_blocks: 0
  train_final_norm: false
  train_head: true
"""


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "zero_shot"])
@pytest.mark.parametrize("given", [{}, {"n_tokens": 4, "r": 4}])
def test_a_run_saved_with_the_flat_method_section_has_the_same_settings(method, given, tmp_path, caplog):
    """A run directory from before per-method sections still loads, as its method's keys only, and an
    experiment (or a resume) with the same settings finds no difference: a finished run stays finished.
    `given`: the experiment's --set method keys, which the old code saved into every method's section."""
    import yaml

    out = tmp_path / "ex"
    flags = {k: v for k, v in _flags(out, tmp_path / "model", tmp_path / "data").items() if not k.startswith("method.")}
    cfg = experiment._method_cfg(build_config(flags={**flags, **{f"method.{k}": v for k, v in given.items()}}),
                                 method, out / method, 1e-3)
    old = cfg.to_dict()
    old["method"] = {**yaml.safe_load(FLAT_METHOD)["method"], **given, "name": method}
    (out / method).mkdir(parents=True)
    (out / method / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with caplog.at_level("WARNING"):
        loaded = load_run_config(out / method)
    assert type(loaded.method) is type(cfg.method) and loaded.to_dict() == cfg.to_dict()
    assert experiment.config_differences(loaded, cfg) == []
    experiment._check_same(out / method, cfg, overwrite=False, memo={})  # no refusal, nothing removed
    assert (out / method / "config.yaml").is_file()
    # a non-default key of another method is dropped with a warning naming it; defaults silently
    foreign = [k for k in given if not hasattr(cfg.method, k)]
    assert all(f"method.{k}=4 ignored" in caplog.text for k in foreign)
    assert bool(caplog.records) == bool(foreign)
    # a changed key of the run's own method is still a difference
    if method == "lora":
        changed = experiment._method_cfg(build_config(flags={**flags, **{f"method.{k}": v for k, v in given.items()},
                                                             "method.r": 16}), method, out / method, 1e-3)
        assert [k for k, *_ in experiment.config_differences(loaded, changed)] == ["method.r"]


# 3. resume does not notice changed data ---------------------------------------------------------


def test_resume_refuses_cut_data(tiny_neo, tmp_path, monkeypatch, capsys):
    from sumtune.recipes import train as trainer
    from sumtune.tiny import synthetic_news

    data = tmp_path / "news.jsonl"
    rows = synthetic_news(40, seed=3)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "run"
    real_step, calls = trainer.optimizer_step, []

    def killed_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_step(*a, **k)

    monkeypatch.setattr(trainer, "optimizer_step", killed_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        main(_train_argv(tiny_neo, data, out, "--max-steps", "4", "--save-steps", "2"))
    monkeypatch.setattr(trainer, "optimizer_step", real_step)
    assert (out / "checkpoints").is_dir()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]), encoding="utf-8")  # the file cut
    err = _error(_train_argv(tiny_neo, data, out, "--max-steps", "4", "--save-steps", "2", "--resume"), capsys)
    assert "data changed" in err
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # restored: resumes
    assert main(_train_argv(tiny_neo, data, out, "--max-steps", "4", "--save-steps", "2", "--resume")) == 0


# 4. relative paths; evaluate/summarize --data/--model ------------------------------------------


def test_relative_paths_are_stored_absolute_and_runs_travel(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(kaggle_dir.parent)
    rel_data = os.path.relpath(kaggle_dir)
    rel_model = os.path.relpath(tiny_neo)
    assert main(_train_argv(rel_model, rel_data, "run", "--max-steps", "2")) == 0
    cfg = load_run_config(kaggle_dir.parent / "run")
    assert cfg.data.source == str(kaggle_dir) and cfg.model.name == str(tiny_neo)
    monkeypatch.chdir(tmp_path)  # elsewhere: still usable
    run = str(kaggle_dir.parent / "run")
    assert main(["evaluate", run, "--limit", "2", "--max-new-tokens", "4"]) == 0

    # --data: other data, recorded; --model: the same model at another path
    other = tmp_path / "other.jsonl"
    from sumtune.tiny import synthetic_news

    other.write_text("".join(json.dumps(r) + "\n" for r in synthetic_news(30, seed=9)), encoding="utf-8")
    assert main(["evaluate", run, "--data", str(other), "--limit", "2", "--max-new-tokens", "4"]) == 0
    [(_, where)] = RunDir(run).other_evals("test")  # beside the run's own eval/test/
    m = json.loads((where / "metrics.json").read_text())
    assert m["data"] == str(other) and m["data_is_training_data"] is False and m["n"] == 2
    assert m["split_rows"] == 30  # the whole file as the test split
    import shutil

    moved = tmp_path / "moved-model"
    shutil.copytree(tiny_neo, moved)
    monkeypatch.setattr("sys.stdin", io.StringIO("A storm hit the coast on Monday. Officials said roads closed."))
    assert main(["summarize", run, "--model", str(moved), "--max-new-tokens", "4"]) == 0


# 5. checks before anything is written -----------------------------------------------------------


def test_max_length_beyond_positions_is_refused_and_leaves_nothing(tiny_gpt2, kaggle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(_train_argv(tiny_gpt2, kaggle_dir, out, "--max-length", "1500", "--max-steps", "1"), capsys)
    assert "1024 positions" in err and "--max-length 1024" in err
    assert not out.exists()
    # a prompt-tuning run counts its virtual tokens
    argv = _train_argv(tiny_gpt2, kaggle_dir, out, "--max-length", "1024", "--max-steps", "1")
    argv[argv.index("lora")] = "prompt_tuning"
    argv[argv.index("method.r=4")] = "method.lora.r=4"  # a key of lora's: prompt tuning has none such
    err = _error(argv + ["--set", "method.n_tokens=8"], capsys)
    assert "soft-prompt tokens" in err and "--max-length 1016" in err and not out.exists()
    # and then the same command, fixed, runs (no "already holds a run")
    assert main(_train_argv(tiny_gpt2, kaggle_dir, out, "--max-length", "1024", "--max-steps", "1")) == 0


def test_a_failed_start_removes_what_it_wrote(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    from sumtune.recipes import train as trainer

    def boom(*a, **k):
        raise UserError("simulated failure in the first step")

    monkeypatch.setattr(trainer, "optimizer_step", boom)
    out = tmp_path / "run"
    assert "simulated" in _error(_train_argv(tiny_neo, kaggle_dir, out, "--max-steps", "2"), capsys)
    assert not out.exists()


# 6. a sweep that cannot train ---------------------------------------------------------------------


def test_sweep_refuses_a_budget_that_trains_nothing(tiny_neo, kaggle_dir, tmp_path, capsys):
    argv = ["experiment", "--model", str(tiny_neo), "--data", str(kaggle_dir), "--output-dir", str(tmp_path / "e"),
            "--max-steps", "4", "--sweep-lr", "--precision", "fp32"]
    err = _error(argv, capsys)
    assert "lr-sweep run 1 steps" in err and "--max-steps" in err
    assert not (tmp_path / "e" / "sweep").exists()


def test_one_step_trains(tiny_neo, kaggle_dir, tmp_path):
    assert main(_train_argv(tiny_neo, kaggle_dir, tmp_path / "run", "--max-steps", "1")) == 0
    train = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert train[0]["split"] == "train" and train[0]["lr"] > 0


def test_sweep_ties_are_reported(caplog):
    best, tied = experiment._best({1e-4: 2.0, 3e-4: 2.0, 1e-3: 2.0}, (1e-4, 3e-4, 1e-3))
    assert best == 3e-4 and tied == [1e-4, 3e-4, 1e-3]
    best, tied = experiment._best({1e-4: 2.0, 3e-4: 1.5}, (1e-4, 3e-4, 1e-3))
    assert best == 3e-4 and tied == [3e-4]


# 7-9. export, --lr, --method, summarize RUN..., compare --split -------------------------------------


def test_export_refuses_an_unfinished_run(tiny_neo, tmp_path, capsys):
    from method_utils import make_run

    from sumtune.io import atomic_write_json

    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", sets=("method.r=4",))
    atomic_write_json(run / "results.json", {"method": "lora"})  # as after Ctrl-C
    err = _error(["export", str(run), str(tmp_path / "out")], capsys)
    assert "unfinished" in err and "--resume" in err and not (tmp_path / "out").exists()


def test_experiment_lr_has_one_meaning(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "METHODS", ("zero_shot", "lora"))
    base = ["experiment", "--model", str(tiny_neo), "--data", str(kaggle_dir), "--max-steps", "2",
            "--precision", "fp32", "--batch-size", "4", "--grad-accum", "1", "--max-length", "192",
            "--set", "data.max_summary_length=48", "--eval-limit", "1", "--decoding", "greedy",
            "--set", "eval.max_new_tokens=4", "--set", "method.r=4"]
    assert main([*base, "--output-dir", str(tmp_path / "a"), "--lr", "3e-4"]) == 0  # the default's value applies
    assert json.loads((tmp_path / "a/experiment.json").read_text())["lr"]["lora"] == 3e-4
    assert main([*base, "--output-dir", str(tmp_path / "b"), "--lr", "lora=5e-4"]) == 0
    assert load_run_config(tmp_path / "b/lora").train.lr == 5e-4
    assert "--lr fixes one rate" in _error([*base, "--output-dir", str(tmp_path / "c"), "--lr", "1e-3",
                                            "--sweep-lr"], capsys)
    assert main([*base, "--output-dir", str(tmp_path / "d"), "--lr", "nope=1"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_train_requires_method(capsys):
    assert "required: --method" in _error_parse(["train", "--max-steps", "1"], capsys)


def _error_parse(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_summarize_several_runs_and_compare_split(tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    from method_utils import make_run

    from sumtune.recipes.evaluate import evaluate_run

    runs = [make_run(tmp_path / m, tiny_neo, m, sets=(f"data.source={kaggle_dir}", "method.lora.r=4",
                                                     "method.prompt_tuning.n_tokens=4"))[0] for m in ("lora", "prompt_tuning")]
    monkeypatch.setattr("sys.stdin", io.StringIO("A storm hit the coast on Monday. Officials said roads closed."))
    capsys.readouterr()
    assert main(["summarize", *map(str, runs), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert all(f"== {r}" in out for r in runs)
    for r in runs:
        evaluate_run(r, "validation", limit=2, overrides={"max_new_tokens": 4})
    assert main(["compare", *map(str, runs), "--split", "validation", "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp/compare.md").read_text()
    assert "Scores on the validation split" in md and "| not evaluated |" not in md  # every run has scores
