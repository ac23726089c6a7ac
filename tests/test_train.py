"""The training loop: exact accumulation against one large batch, the loss against
Transformers' own, records, early stopping, zero-shot, and the guards."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sumtune.cli import main
from sumtune.config import build_config
from sumtune.data import Collator, load_splits, tokenize_splits
from sumtune.errors import UserError
from sumtune.methods import get_method
from sumtune.modeling import load_model, load_tokenizer
from sumtune.recipes import train as recipe
from sumtune.recipes.evaluate import summary_loss
from sumtune.runs import load_run
from sumtune.training import state, step


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the models are tiny, so more threads only compete for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(model_dir, data_dir, out, **flags):
    base = {"model.name": str(model_dir), "data.source": str(data_dir), "output_dir": str(out),
            "method.name": "lora", "method.lora.r": 4, "method.lora.dropout": 0.0, "train.precision": "fp32",
            "data.max_length": 192, "data.max_summary_length": 64, "train.batch_size": 2, "train.grad_accum": 1}
    base.update(flags)
    return build_config(flags=base)


def _adapter(run, method="lora"):
    from safetensors.torch import load_file

    name = get_method(method).weights_file
    return load_file(str(run / "adapter" / name))


def _events(run, split=None):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if split is None or e["split"] == split]


def test_token_loss_sum_matches_transformers_loss(tiny_neo, kaggle_dir):
    """Sum over target tokens / their number == the mean HF computes from labels."""
    cfg = _cfg(tiny_neo, kaggle_dir, "unused")
    tok = load_tokenizer(str(tiny_neo))
    ds = tokenize_splits(load_splits(cfg.data, 0), tok, cfg.data)["train"]
    batch = Collator(tok.pad_token_id)([ds[i] for i in range(5)])
    n_target = [sum(label != -100 for label in ds[i]["labels"]) for i in range(5)]
    assert len(set(n_target)) > 1 and (batch["attention_mask"] == 0).any()  # uneven, padded
    model = load_model(str(tiny_neo))
    total, n = step.token_loss_sum(model, batch)
    assert n == step.count_targets(batch) == sum(n_target)
    torch.testing.assert_close(total / n, model(**batch).loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_accumulation_equals_one_large_batch(tiny_neo, kaggle_dir, tmp_path, method):
    """Batch 1 x accumulation 4 == batch 4 x accumulation 1 on the same samples (uneven summaries)."""
    runs = {}
    for b, a in ((1, 4), (4, 1)):
        cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / f"b{b}a{a}", **{
            "method.name": method, "method.prompt_tuning.n_tokens": 4, "train.batch_size": b, "train.grad_accum": a,
            "train.max_steps": 3, "train.lr": 1e-2, "train.warmup_ratio": 0.0})
        runs[(b, a)] = _adapter(recipe.train(cfg), method)
    small, large = runs[(1, 4)], runs[(4, 1)]
    assert small.keys() == large.keys()
    for k in small:  # relative to the tensor's norm: Adam's g/sqrt(v) magnifies rounding where g ~ 0
        assert float((small[k] - large[k]).norm() / large[k].norm()) < 1e-6, k
    # the weights moved from their initialisation by far more than the tolerance
    m = get_method(method)
    cfg = _cfg(tiny_neo, kaggle_dir, "x", **{"method.name": method, "method.prompt_tuning.n_tokens": 4})
    torch.manual_seed(cfg.train.seed)
    m.save(m.prepare(load_model(str(tiny_neo)), load_tokenizer(str(tiny_neo)), m.options(cfg.method)), tmp_path / "init" / "adapter",
           {"method": method})
    init = _adapter(tmp_path / "init", method)
    assert max(float((small[k] - init[k]).abs().max()) for k in small) > 1e-3


def test_per_micro_batch_mean_would_differ(tiny_neo, kaggle_dir):
    """The samples have uneven target lengths, so averaging per micro-batch is not the token mean
    (the accumulation test above would catch that normalisation)."""
    cfg = _cfg(tiny_neo, kaggle_dir, "unused")
    tok = load_tokenizer(str(tiny_neo))
    ds = tokenize_splits(load_splits(cfg.data, 0), tok, cfg.data)["train"]
    model = load_model(str(tiny_neo))
    collate = Collator(tok.pad_token_id)
    parts = [step.token_loss_sum(model, collate([ds[i]])) for i in range(4)]
    token_mean = sum(float(s.detach()) for s, _ in parts) / sum(n for _, n in parts)
    batch_mean = sum(float(s.detach()) / n for s, n in parts) / 4
    assert abs(token_mean - batch_mean) > 1e-4


def test_param_groups_decay_matrices_only(tiny_neo, kaggle_dir):
    tok = load_tokenizer(str(tiny_neo))
    for method in ("prompt_tuning", "full"):
        cfg = _cfg(tiny_neo, kaggle_dir, "x", **{"method.name": method, "method.prompt_tuning.n_tokens": 4})
        m = get_method(method)
        model = m.prepare(load_model(str(tiny_neo)), tok, m.options(cfg.method))
        decay, no_decay = state.param_groups(model, 0.1, get_method(method))
        names = {id(p): n for n, p in model.named_parameters()}
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(p.ndim >= 2 for p in decay["params"])
        assert all(p.ndim == 1 or names[id(p)] == "soft_prompt" for p in no_decay["params"])
        if method == "prompt_tuning":
            assert [names[id(p)] for p in no_decay["params"]] == ["soft_prompt"] and not decay["params"]
        else:
            assert any("ln_" in names[id(p)] for p in no_decay["params"])
            assert any(names[id(p)].endswith("bias") for p in no_decay["params"])


def test_cli_run_writes_records_and_shows_progress(tiny_gpt2, kaggle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
               "--output-dir", str(out), "--epochs", "2", "--batch-size", "4", "--grad-accum", "2",
               "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=64",
               "--set", "train.eval_steps=2", "--set", "train.tensorboard=true"])
    assert rc == 0
    io = capsys.readouterr()
    assert "epoch 1/2:" in io.err and "tok_s=" in io.err and "lr=" in io.err  # the tqdm bars
    summaries = [line for line in io.out.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 2 and "val loss" in summaries[0] and "tok/s" in summaries[0]
    assert (out / "config.yaml").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # removed once the run is complete
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))

    train_ev, val_ev = _events(out, "train"), _events(out, "validation")
    assert [e["step"] for e in train_ev] == [1, 2, 3, 4, 5, 6]  # 24 samples / (4 x 2) = 3 steps per epoch
    for e in train_ev:
        assert set(e) == {"step", "epoch", "split", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
        assert math.isfinite(e["loss"]) and e["grad_norm"] > 0 and e["tokens_per_s"] > 0
    assert [e["step"] for e in val_ev] == [2, 3, 4, 6]  # every 2 steps and at each epoch end
    assert [e["epoch"] for e in val_ev if e["epoch"] == int(e["epoch"])] == [1, 2]

    res = json.loads((out / "results.json").read_text())
    assert res["finished"] is True and res["method"] == "lora" and res["epochs_run"] == 2 and res["steps"] == 6
    assert res["best_val_loss"] == min(e["loss"] for e in val_ev)
    assert 0 < res["trainable_params"] < res["total_params"] and res["base_model"]["model_type"] == "gpt2"
    assert res["trainable_pct"] == pytest.approx(100 * res["trainable_params"] / res["total_params"])
    for key in ("train_seconds", "peak_memory_mb", "tokens_per_s"):
        assert res[key] > 0
    assert res["early_stopped"] is False


def test_early_stopping_keeps_the_best_weights(tiny_neo, kaggle_dir, tmp_path):
    """Four training samples and a large rate overfit fast: validation loss rises, training stops
    after `patience` bad validations, and RUN/adapter holds the weights of the best one."""
    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "run", **{
        "method.name": "last_layers", "data.max_train_samples": 4, "train.batch_size": 4,
        "train.lr": 3e-2, "train.epochs": 30, "train.patience": 2, "train.warmup_ratio": 0.0})
    run = recipe.train(cfg)
    res = json.loads((run / "results.json").read_text())
    val = [e["loss"] for e in _events(run, "validation")]
    assert res["early_stopped"] is True and res["epochs_run"] < 30
    best = val.index(min(val))
    assert len(val) == best + 1 + 2 and all(v >= val[best] for v in val[best + 1:])
    assert res["best_val_loss"] == val[best] and res["best_step"] == best + 1
    # the saved weights score the best validation loss, through the evaluate path (full logits)
    _, _, model, tok = load_run(run)
    rows = tokenize_splits(load_splits(cfg.data, cfg.data.seed), tok, cfg.data)["validation"]
    assert summary_loss(model, rows, tok.pad_token_id, 4, None) == pytest.approx(val[best], rel=1e-5)


def test_zero_shot_records_the_base_model(tiny_neo, kaggle_dir, tmp_path):
    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "zs", **{"method.name": "zero_shot"})
    run = recipe.train(cfg)
    res = json.loads((run / "results.json").read_text())
    assert res["trainable_params"] == 0 and res["epochs_run"] == 0 and res["finished"] is True
    meta = json.loads((run / "adapter" / "sumtune.json").read_text())
    assert meta["method"] == "zero_shot" and meta["base_model"] == res["base_model"]
    tok = load_tokenizer(str(tiny_neo))
    rows = tokenize_splits(load_splits(cfg.data, cfg.data.seed), tok, cfg.data)["validation"]
    ref = summary_loss(load_model(str(tiny_neo)), rows, tok.pad_token_id, 3, None)
    assert res["best_val_loss"] == pytest.approx(ref, rel=1e-6)


def test_a_run_ending_inside_its_first_epoch_shows_steps_and_the_fraction(tiny_gpt2, kaggle_dir, tmp_path, capsys):
    """8 steps of a 500-step epoch are not "epoch 1/1": the bar and the epoch's line say how much ran."""
    from sumtune.training.records import epoch_label

    assert epoch_label(0, 8, 500) == "8 steps (0.016 of an epoch)"
    assert epoch_label(1, 1000, 500) == "epoch 2/2" and epoch_label(0, 500, 500) == "epoch 1/1"
    # 24 samples / (4 x 1) = 6 steps per epoch; 2 of them run
    assert main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1",
                 "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=48",
                 "--set", "method.r=4"]) == 0
    io = capsys.readouterr()
    assert "2 steps (0.333 of an epoch)" in io.err and "epoch 1/1" not in io.err  # the tqdm bar
    assert "epoch 1/1 (2 of its 6 steps, 0.333 of the epoch): train loss" in io.out


def test_never_clobbers_a_run(tiny_neo, kaggle_dir, tmp_path, capsys):
    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "run", **{"train.max_steps": 1})
    run = recipe.train(cfg)
    before = (run / "results.json").read_bytes()
    with pytest.raises(UserError, match="already holds a run.*--resume.*--output-dir"):
        recipe.train(cfg)
    assert (run / "results.json").read_bytes() == before
    recipe.train(cfg, resume=True)  # finished: nothing to do
    assert "nothing to resume" in capsys.readouterr().out
    with pytest.raises(UserError, match="nothing to resume"):
        recipe.train(_cfg(tiny_neo, kaggle_dir, tmp_path / "new"), resume=True)


def test_nan_loss_stops_naming_the_step(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = step.token_loss_sum

    def nan_on_third_step(model, batch):
        total, n = real(model, batch)
        if model.training:
            calls["n"] += 1
        return (total * float("nan") if calls["n"] == 3 else total), n

    monkeypatch.setattr(state, "token_loss_sum", nan_on_third_step)
    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "run", **{"train.max_steps": 5, "train.eval_steps": 1, "train.fast": False})
    with pytest.raises(UserError) as e:
        recipe.train(cfg)
    msg = str(e.value)
    assert "nan at step 3" in msg and "adapter" in msg and "\n" not in msg
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # best of steps 1-2 kept
    assert [ev["step"] for ev in _events(tmp_path / "run", "validation")] == [1, 2]


def test_out_of_memory_says_how_to_continue(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(recipe, "optimizer_step", oom)
    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "run", **{"train.batch_size": 8, "train.grad_accum": 2})
    with pytest.raises(UserError, match=r"out of memory at step 1 .*--batch-size 4 --grad-accum 4.*--resume"):
        recipe.train(cfg)
