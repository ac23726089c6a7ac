"""Model selection by generated ROUGE (train.select_by): the ROUGE recorded at each validation is
what `sumtune evaluate` gives for the same weights; the kept adapter is the ROUGE-best one, in a
run where the loss would have kept another; early stopping follows the score; the test split is
never read; config, resume and FSDP checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import write_kaggle_dir
from safetensors.torch import load_file

from sumtune.config import build_config, config_differences, save_config
from sumtune.errors import UserError
from sumtune.methods import get_method
from sumtune.metrics import ROUGE_KEYS
from sumtune.recipes import train as recipe
from sumtune.recipes.evaluate import evaluate_run
from sumtune.runs import RunDir
from sumtune.training.resume import check_run_dir
from sumtune.training.state import check_selection

N = 6  # eval.select_samples: the first 6 of the 8 validation rows
# Head-only tuning at a high constant rate: the validation loss falls at every step while the
# ROUGE-L of the greedy summaries peaks before the end (found by trying rates and seeds; fp32, one thread).
SETTINGS = {"method.name": "last_layers", "train.lr": 1e-2, "train.seed": 1, "train.max_steps": 8,
            "train.eval_steps": 1, "train.patience": 100, "train.scheduler": "constant", "train.warmup_ratio": 0.0,
            "train.select_by": "rougeL", "eval.select_samples": N, "eval.max_new_tokens": 24}


def _cfg(model_dir, data_dir, out, **flags):
    base = {"model.name": str(model_dir), "data.source": str(data_dir), "output_dir": str(out),
            "train.precision": "fp32", "data.max_length": 192, "data.max_summary_length": 64,
            "train.batch_size": 4, "train.grad_accum": 1, **SETTINGS}
    base.update(flags)
    return build_config(flags=base)


def _validations(run):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["split"] == "validation"]


class NoTestSplit(dict):
    """The tokenised splits with the test split out of reach: reading it raises."""

    def __getitem__(self, key):
        if key == "test":
            raise AssertionError("the test split was read during training")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def values(self):
        raise AssertionError("all splits were read during training")

    items = values


@pytest.fixture(scope="module")
def selected(tiny_neo, tmp_path_factory):
    """A select_by=rougeL run, the test split guarded, and the weights of every validation saved
    (through the method's own save, as RUN/adapter is written)."""
    root = tmp_path_factory.mktemp("select")
    data = write_kaggle_dir(root / "data", sizes=(24, 8, 8))
    snaps, guarded = root / "snaps", []
    setup, validate = recipe.setup, recipe.validate

    def guarded_setup(*a, **k):
        s = setup(*a, **k)
        s.data = NoTestSplit(s.data)
        guarded.append(s)
        return s

    def snapshot_validate(s, model, adapter, progress, *rest):
        event = validate(s, model, adapter, progress, *rest)
        s.method.save(s.accelerator.unwrap_model(model), snaps / f"step{progress.step}", s.meta)
        return event

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe, "setup", guarded_setup)
        mp.setattr(recipe, "validate", snapshot_validate)
        run = recipe.train(_cfg(tiny_neo, data, root / "run"))
    torch.set_num_threads(threads)
    assert len(guarded) == 1
    return run, snaps, data


def _evaluate_weights(run, adapter, tmp_path):
    """`sumtune evaluate` on the first N validation rows of a copy of `run` holding `adapter`."""
    copy = tmp_path / f"run-{adapter.name}"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "adapter")
    shutil.copytree(adapter, copy / "adapter")
    return evaluate_run(copy, "validation", limit=N)


def test_recorded_rouge_is_what_evaluate_gives_for_the_same_weights(selected, tmp_path):
    run, snaps, _ = selected
    events = _validations(run)
    assert [e["step"] for e in events] == list(range(1, 9))
    for e in events:
        assert {"step", "epoch", "split", "loss", "best", *ROUGE_KEYS, "select_n", "select_seconds"} <= set(e)
        assert e["select_n"] == N
        m = _evaluate_weights(run, snaps / f"step{e['step']}", tmp_path)
        assert m["n"] == N
        for k in ROUGE_KEYS:
            assert e[k] == pytest.approx(m[k], abs=1e-12), (e["step"], k)
            assert e["ci95"][k] == pytest.approx(m["ci95"][k], abs=1e-12)


def test_keeps_the_rouge_best_checkpoint_where_loss_would_keep_another(selected, tmp_path):
    run, snaps, _ = selected
    events = _validations(run)
    scores, losses = [e["rougeL"] for e in events], [e["loss"] for e in events]
    by_rouge = events[scores.index(max(scores))]  # the first of any tie
    by_loss = events[losses.index(min(losses))]
    assert by_rouge["step"] != by_loss["step"]  # the two choices differ: this run tells them apart
    res = json.loads((run / "results.json").read_text())
    assert (res["select_by"], res["best_step"], res["best_score"]) == ("rougeL", by_rouge["step"], max(scores))
    assert res["best_val_loss"] == by_rouge["loss"]  # the loss at the chosen step
    assert [e["best"] for e in events] == [s > max(scores[:i], default=-1) for i, s in enumerate(scores)]
    # RUN/adapter holds the weights of the ROUGE-best step, and they score the recorded best
    name = get_method("last_layers").weights_file
    kept, best = load_file(str(run / "adapter" / name)), load_file(str(snaps / f"step{by_rouge['step']}" / name))
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)
    assert evaluate_run(run, "validation", limit=N)["rougeL"] == pytest.approx(max(scores), abs=1e-12)
    assert res["validation_seconds"] >= sum(e["select_seconds"] for e in events)


def test_stops_early_by_the_score(selected, tiny_neo, tmp_path, capfd):
    """patience 1: the run stops at the first validation whose ROUGE-L does not beat the best so far,
    while its loss was still falling; the epoch line shows the score."""
    run, _, data = selected
    events = _validations(run)
    scores = [e["rougeL"] for e in events]
    first_bad = next(i for i, s in enumerate(scores) if i and s <= max(scores[:i]))
    assert events[first_bad]["loss"] < min(e["loss"] for e in events[:first_bad])
    torch.set_num_threads(1)
    stopped = recipe.train(_cfg(tiny_neo, data, tmp_path / "patience1", **{"train.patience": 1}))
    res = json.loads((stopped / "results.json").read_text())
    assert res["early_stopped"] is True and res["steps"] == events[first_bad]["step"]
    assert [e["rougeL"] for e in _validations(stopped)] == scores[:first_bad + 1]
    out = capfd.readouterr()
    assert f"val rougeL {100 * scores[first_bad]:.2f} (n={N})" in out.out + out.err
    assert f"best validation rougeL {100 * max(scores):.2f}" in out.out


def test_select_by_and_select_samples_are_checked(tiny_neo, kaggle_dir, tmp_path):
    with pytest.raises(UserError, match=r"train.select_by.*loss, rouge1, rouge2, rougeL, rougeLsum"):
        build_config(sets=["train.select_by=bleu"])
    with pytest.raises(UserError, match=r"eval.select_samples.*>= 1"):
        build_config(sets=["eval.select_samples=0"])
    assert build_config().train.select_by == "loss" and build_config().eval.select_samples == 64
    with pytest.raises(UserError, match="not supported under FSDP"):
        check_selection(build_config(sets=["train.select_by=rouge2"]), fsdp=True)
    check_selection(build_config(), fsdp=True)


def test_resume_refuses_another_selection(tmp_path):
    """select_by changes which weights are kept; with ROUGE selection the decoding and the subset do too."""
    loss, rouge = build_config(), build_config(sets=["train.select_by=rougeL"])
    assert [k for k, *_ in config_differences(loss, rouge)] == ["train.select_by"]
    more = build_config(sets=["eval.select_samples=32"])
    assert config_differences(loss, more) == []  # selection by loss: decoding keys do not count
    rouge_more = build_config(sets=["train.select_by=rougeL", "eval.select_samples=32", "eval.preset=cnndm"])
    keys = {k for k, *_ in config_differences(rouge, rouge_more)}
    assert {"eval.select_samples", "eval.preset", "eval.num_beams"} <= keys
    assert config_differences(rouge, build_config(sets=["train.select_by=rougeL", "eval.batch_size=8"])) == []
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(rouge, run.config)
    with pytest.raises(UserError, match=r"cannot resume .*train.select_by was 'rougeL', now 'loss'"):
        check_run_dir(run, loss, resume=True)
    check_run_dir(run, build_config(sets=["train.select_by=rougeL"]), resume=True)


def _argv(model, data, out, batch: int) -> list[str]:
    sets = [f"{k}={v}" for k, v in SETTINGS.items() if k not in ("method.name", "train.lr", "train.seed")]
    return ["train", "--method", "last_layers", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--batch-size", str(batch), "--grad-accum", "1", "--max-length", "192", "--lr", "1e-2", "--seed", "1",
            "--precision", "fp32", "--set", "data.max_summary_length=64", *[x for s in sets for x in ("--set", s)]]


@pytest.mark.slow  # two processes training and decoding: ~75 s on a loaded 2-core machine
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")
def test_two_processes_select_as_one_process(selected, tiny_neo, tmp_path):
    """DDP: each process decodes its share of the subset, the summaries are gathered; the two-process
    run (batch 2 each) records the one-process run's (batch 4) ROUGE and keeps the same step."""
    run, _, data = selected
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sumtune.cli"]
    proc = subprocess.run([*launch, *_argv(tiny_neo, data, tmp_path / "two", 2)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = _validations(tmp_path / "two"), _validations(run)
    assert [e["step"] for e in two] == [e["step"] for e in one]
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["select_n"] == N and all(a[k] == pytest.approx(b[k], abs=1e-12) for k in ROUGE_KEYS)
    res2, res1 = (json.loads((r / "results.json").read_text()) for r in (tmp_path / "two", run))
    assert res2["processes"] == 2 and (res2["best_step"], res2["best_score"]) == (res1["best_step"], res1["best_score"])


def test_interrupted_and_resumed_selects_as_uninterrupted(selected, tiny_neo, tmp_path, monkeypatch):
    """A stop request after step 4 (a checkpoint, then exit), then --resume: the same validation
    records, the same kept step and weights as the uninterrupted run (best_score resumes too)."""
    run, _, data = selected
    cfg = _cfg(tiny_neo, data, tmp_path / "resumed")
    calls = []

    def stop_after_four(accelerator, flag):
        calls.append(flag)
        return len(calls) == 4

    torch.set_num_threads(1)
    monkeypatch.setattr(recipe, "any_process", stop_after_four)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg)
    assert len(_validations(tmp_path / "resumed")) == 4
    monkeypatch.undo()
    recipe.train(cfg, resume=True)
    drop = ("select_seconds",)
    strip = [{k: v for k, v in e.items() if k not in drop} for e in _validations(tmp_path / "resumed")]
    assert strip == [{k: v for k, v in e.items() if k not in drop} for e in _validations(run)]
    res2, res1 = (json.loads((r / "results.json").read_text()) for r in (tmp_path / "resumed", run))
    assert (res2["best_step"], res2["best_score"]) == (res1["best_step"], res1["best_score"])
    name = get_method("last_layers").weights_file
    a, b = (load_file(str(r / "adapter" / name)) for r in (tmp_path / "resumed", run))
    assert all(torch.equal(a[k], b[k]) for k in b)
