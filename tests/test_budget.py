"""Equal-cost training: the FLOPs count against a hand computation, a FLOPs budget stopping at the
step the count says (and resuming bit-identically after SIGKILL), a seconds budget stopping at
about its limit with the schedule decayed there, budgets through `experiment` into results.json,
experiment.json and the comparison, and bad values refused in one line."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import write_kaggle_dir
from test_resume import (
    _events,
    _start,
    _wait_for,
    _weights,
    one_thread,  # noqa: F401  (autouse: one torch thread here and in the subprocesses)
)
from transformers import GPT2Config, GPTNeoConfig, LlamaConfig

from sumtune import flops
from sumtune.cli import main
from sumtune.config import build_config
from sumtune.recipes import experiment
from sumtune.recipes.experiment import Plan
from sumtune.tiny import ARCHS, tiny_config

# --- the count ------------------------------------------------------------------


def test_the_count_equals_a_hand_computation():
    d, inner, layers, vocab = 16, 40, 3, 100
    neo = GPTNeoConfig(vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=2, intermediate_size=inner,
                       attention_types=[[["global"], layers]], max_position_embeddings=64)
    block = 4 * d * d + 2 * d * inner  # q, k, v, out; fc in, fc out
    n = layers * block + vocab * d
    shape = flops.model_shape(neo)
    assert (shape.layers, shape.block, shape.head, shape.matmul) == (layers, block, vocab * d, n)
    # GPT-2 (fused qkv Conv1D, inner 4d) counts the same matrices; Llama: GQA keys/values and a gated MLP
    gpt2 = flops.model_shape(GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=2, n_positions=64))
    assert gpt2.block == 4 * d * d + 2 * d * 4 * d
    llama = flops.model_shape(LlamaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=2, intermediate_size=inner,
                                          num_attention_heads=4, num_key_value_heads=2))
    assert llama.block == 2 * d * d + 2 * d * (2 * d // 4) + 3 * d * inner

    trainable, tokens = 1234, 77
    assert flops.flops_per_token(shape, "lora", trainable) == 2 * n + 2 * n + 2 * trainable
    assert flops.step_flops(shape, "prompt_tuning", trainable, tokens) == tokens * (4 * n + 2 * trainable)
    head_only = vocab * d
    assert flops.flops_per_token(shape, "last_layers", head_only) == 2 * n + 2 * head_only  # bench/mfu.py's rule
    from sumtune.methods.last_layers.config import LastLayersConfig

    assert flops.flops_per_token(shape, "last_layers", trainable, LastLayersConfig(last_k_blocks=2)) == (
        2 * n + 2 * (vocab * d + 2 * block) + 2 * trainable)
    assert flops.flops_per_token(shape, "zero_shot", 0) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_counts_its_blocks_weight_matrices(arch):
    """Built on the meta device from the config alone: a block's multiply-accumulates per token are its
    weight matrices' sizes (the real model's 2-D parameters of a block), the head vocab x hidden."""
    from transformers import AutoModelForCausalLM

    from sumtune.architecture import decoder_parts

    cfg = tiny_config(arch, vocab=300, eos=0)
    model = AutoModelForCausalLM.from_config(cfg)
    block = sum(p.numel() for p in decoder_parts(model).blocks[0].parameters() if p.ndim == 2)
    shape = flops.model_shape(model.config)
    assert (shape.layers, shape.block, shape.head) == (cfg.num_hidden_layers, block, 300 * cfg.hidden_size)


# --- FLOPs budget: the exact step, and resume ------------------------------------------


def _argv(model, data, out, *extra):
    # as test_resume's run: 16 samples, 4 a step, 2 epochs = 8 steps; LoRA dropout on
    return ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "2", "--max-train-samples", "16", "--batch-size", "2", "--grad-accum", "2",
            "--max-length", "128", "--lr", "3e-3", "--precision", "fp32", "--set", "data.max_summary_length=32",
            "--set", "method.r=4", "--set", "method.dropout=0.1", "--set", "train.save_steps=2", *extra]


def _read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def flops_runs(tiny_neo, tmp_path_factory):
    """(model, data, the budget, the FLOPs-budget run): the budget falls between steps 6 and 7 of an
    unbudgeted run, counted by hand from its per-step tokens."""
    root = tmp_path_factory.mktemp("budget")
    data = write_kaggle_dir(root / "data")
    free = root / "free"
    assert main(_argv(tiny_neo, data, free)) == 0
    res = _read(free / "results.json")
    shape = flops.model_shape(GPTNeoConfig.from_pretrained(tiny_neo))
    per_token = 4 * shape.matmul + 2 * res["trainable_params"]
    tokens = [e["tokens"] for e in _events(free) if e["split"] == "train"]
    assert len(tokens) == 8 and res["train_flops"] == per_token * sum(tokens) and res["budget"] is None
    limit = per_token * (sum(tokens[:6]) + tokens[6] // 2)  # reached by step 7
    run = root / "budget"
    assert main(_argv(tiny_neo, data, run, "--budget-flops", f"{limit:.17g}")) == 0
    return tiny_neo, data, limit, run, per_token * sum(tokens[:7])


def test_a_flops_budget_stops_at_the_counted_step(flops_runs):
    _, _, limit, run, spent = flops_runs
    res = _read(run / "results.json")
    assert res["steps"] == 7 and res["train_flops"] == spent
    assert res["budget"] == {"kind": "flops", "limit": float(limit), "spent": float(spent), "steps": 7, "epochs": 1.75,
                             "tokens": sum(e["tokens"] for e in _events(run) if e["split"] == "train"),
                             "schedule_steps": 7, "stopped_by_budget": True, "stopped_by": "budget"}
    val = [e for e in _events(run) if e["split"] == "validation"]
    assert [e["step"] for e in val] == [4, 7]  # the stop validates, so the best weights include it
    lrs = [e["lr"] for e in _events(run) if e["split"] == "train"]
    assert lrs[0] == 0.0 and max(lrs) > 0 and lrs[-1] < 0.25 * max(lrs)  # warmup and decay fit the 7 steps


def test_sigkill_then_resume_of_a_flops_budget_run_is_bit_identical(flops_runs, tmp_path):
    model, data, limit, ref, _ = flops_runs
    run = tmp_path / "run"
    proc = _start(_argv(model, data, run, "--budget-flops", f"{limit:.17g}"))
    _wait_for(proc, run, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints").is_dir() and not (run / "results.json").exists()
    assert main(_argv(model, data, run, "--budget-flops", f"{limit:.17g}", "--resume")) == 0
    assert _events(run) == _events(ref)
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _read(run / "results.json"), _read(ref / "results.json")
    assert ra["budget"] == rb["budget"] and ra["train_flops"] == rb["train_flops"]


def test_a_budget_of_one_step_still_trains(flops_runs, tmp_path):
    model, data, *_ = flops_runs
    run = tmp_path / "run"
    assert main(_argv(model, data, run, "--budget-flops", "1")) == 0  # less than any step: that one step trains
    [step] = [e for e in _events(run) if e["split"] == "train"]
    assert step["lr"] == 3e-3 and _read(run / "results.json")["budget"]["steps"] == 1


# --- seconds budget ----------------------------------------------------------------


def test_a_seconds_budget_stops_at_about_its_limit(tiny_neo, tmp_path):
    """3 s of optimizer steps of one 2-row micro-batch each (tens of milliseconds on a loaded 2-core
    machine; the test asks one step to stay under 10% of the budget): within 10%, the rate decayed."""
    data = write_kaggle_dir(tmp_path / "data", sizes=(200, 4, 4))
    run = tmp_path / "run"
    assert main(["train", "--method", "lora", "--model", str(tiny_neo), "--data", str(data), "--output-dir", str(run),
                 "--epochs", "50", "--batch-size", "2", "--grad-accum", "1", "--max-length", "96",
                 "--precision", "fp32", "--set", "data.max_summary_length=24", "--set", "method.r=4",
                 "--budget-seconds", "3"]) == 0
    res = _read(run / "results.json")
    events = [e for e in _events(run) if e["split"] == "train"]
    assert res["budget"]["stopped_by"] == "budget" and res["budget"]["spent"] == res["train_seconds"]
    assert res["budget"]["steps"] == res["steps"] == len(events) < 50 * 100
    assert 3.0 <= res["train_seconds"] < 3.3
    lrs = [e["lr"] for e in events]
    assert max(lrs) == pytest.approx(3e-4, rel=0.1) and lrs[-1] < 0.15 * max(lrs)


# --- experiment and the comparison -----------------------------------------------------------


def test_experiment_with_a_budget_records_and_shows_it(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "METHODS", ("zero_shot", "lora"))
    out = tmp_path / "exp"
    shape = flops.model_shape(GPTNeoConfig.from_pretrained(tiny_neo))
    limit = 40 * 256 * 4 * shape.matmul  # about 40 steps of 256 tokens: a quarter of it trains a sweep run 10
    cfg = build_config(flags={
        "model.name": str(tiny_neo), "data.source": str(kaggle_dir), "output_dir": str(out), "train.epochs": 20,
        "train.batch_size": 2, "train.grad_accum": 1, "train.precision": "fp32", "data.max_length": 128,
        "data.max_summary_length": 32, "eval.max_new_tokens": 4, "method.r": 4, "train.budget_flops": limit})
    experiment.run_experiment(cfg, Plan(sweep_lr=True, eval_limit=2, lr_grid={"lora": (1e-4, 1e-3, 1e-2)}))
    record = _read(out / "experiment.json")
    assert record["budget"] == {"kind": "flops", "limit": limit, "sweep_fraction": experiment.SWEEP_BUDGET_FRACTION}
    lora, zero = _read(out / "lora/results.json")["budget"], _read(out / "zero_shot/results.json")["budget"]
    assert lora["limit"] == limit and lora["stopped_by_budget"] and limit <= lora["spent"]
    assert zero["stopped_by"] == "no training" and zero["spent"] == 0 and zero["steps"] == 0
    sweep = _read(out / "sweep/lora/lr0.001/results.json")["budget"]
    assert sweep["limit"] == limit * experiment.SWEEP_BUDGET_FRACTION and sweep["stopped_by_budget"]

    md = (out / "compare.md").read_text()
    assert f"- **Budget:** {limit:.3g} training FLOPs per run" in md
    assert "each lr-sweep run had 0.25 of it, spent beside it (sweep s)" in md
    row = next(line for line in md.splitlines() if line.startswith("| lora |"))
    assert f"{lora['spent']:.3g} of {limit:.3g} FLOPs: {lora['steps']} steps" in row
    assert "no training" in next(line for line in md.splitlines() if line.startswith("| zero_shot |"))
    compare = _read(out / "compare.json")
    assert [r["budget"] for r in compare["rows"]] == [zero, lora]
    assert f"{limit:.3g} training FLOPs per run" in (out / "report.html").read_text()


# --- bad values -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["--budget-seconds", "0"], "--budget-seconds: expected a number > 0"),
    (["--budget-flops", "lots"], "--budget-flops: expected a number, got 'lots'"),
    (["--budget-seconds", "30", "--budget-flops", "1e12"], "not allowed with argument"),
    (["--set", "train.budget_flops=-1"], "config key 'train.budget_flops': got -1.0, expected a number > 0"),
    (["--set", "train.budget_seconds=soon"], "config key 'train.budget_seconds': got 'soon', expected a number or null"),
    (["--budget-seconds", "30", "--set", "train.budget_flops=1e12"], "'train.budget_seconds' and 'train.budget_flops'"),
])
def test_bad_budgets_are_one_line(args, says, tmp_path, capsys):
    assert main(["train", "--method", "lora", "--data", str(tmp_path), "--output-dir", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_budget_keys_read_from_text_and_yaml(tmp_path):
    assert build_config(sets=["train.budget_flops=1e15"]).train.budget_flops == 1e15
    assert build_config(sets=["train.budget_seconds=null"]).train.budget_seconds is None
    (tmp_path / "c.yaml").write_text("train:\n  budget_seconds: 30\n  budget_flops: null\n")
    assert build_config(str(tmp_path / "c.yaml")).train.budget_seconds == 30.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")
def test_two_processes_stop_a_seconds_budget_at_the_same_step(tiny_neo, tmp_path):
    """Each process times its own steps; they stop by the slowest one's clock, so none waits in a
    collective for a step the other never takes (the launch would hang, then time out)."""
    import subprocess
    import sys

    data = write_kaggle_dir(tmp_path / "data", sizes=(200, 4, 4))
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sumtune.cli"]
    proc = subprocess.run([*launch, "train", "--method", "lora", "--model", str(tiny_neo), "--data", str(data),
                           "--output-dir", str(run), "--epochs", "50", "--batch-size", "1", "--grad-accum", "1",
                           "--max-length", "96", "--precision", "fp32", "--set", "data.max_summary_length=24",
                           "--set", "method.r=4", "--budget-seconds", "2"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _read(run / "results.json")
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert res["processes"] == 2 and res["budget"]["stopped_by"] == "budget" and len(steps) == res["steps"]
    last = steps[-1]["tokens"] / steps[-1]["tokens_per_s"]  # the main process's time of the last step
    assert 2.0 <= res["train_seconds"] < 2.0 + 2 * last


def test_plan_projects_the_step_a_flops_budget_stops_at(flops_runs, capsys):
    """`sumtune plan` with the same budget projects the step the trainer stopped at (counted the
    same way), for the run and for its lr sweep's quarter of the budget."""
    model, data, limit, run, _ = flops_runs
    argv = _argv(model, data, run.parent / "planned", "--budget-flops", f"{limit:.17g}")
    argv[0] = "plan"
    flags = argv[:argv.index("--method")] + argv[argv.index("--method") + 2:]
    assert main([*flags, "--methods", "lora", "--calibration-steps", "1", "--calibration-articles", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    lora = record["methods"][0]
    assert lora["training"]["steps"] == _read(run / "results.json")["steps"] == 7
    assert record["training_budget"] == {"kind": "flops", "limit": float(limit)}
