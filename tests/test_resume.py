"""Exact resume: a run killed mid-epoch (SIGKILL) or stopped with Ctrl-C and resumed ends
bit-identical to an uninterrupted run; a corrupt latest checkpoint falls back to the
previous one; a resume that would change the training is refused. Plus the pickle-free
checkpoint pieces (optimizer, RNG, manifest, keep-last-two)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_kaggle_dir

from sumtune import checkpoint as ck
from sumtune.cli import main
from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.io import atomic_save_tensors, load_tensors

STEPS = 8  # 16 samples / (2 x 2) = 4 steps per epoch, 2 epochs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here and in the subprocesses: the same arithmetic in both (bit-identity),
    and, the models being tiny, no threads competing for the cores."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # LoRA dropout on: the resumed run must also restore the random generators
    return ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "2", "--max-train-samples", "16", "--batch-size", "2", "--grad-accum", "2",
            "--max-length", "128", "--lr", "3e-3", "--precision", "fp32", "--set", "data.max_summary_length=32", "--set", "method.r=4",
            "--set", "method.dropout=0.1", "--set", "train.save_steps=2", *extra]


def _events(run: Path) -> list[dict]:
    """metrics.jsonl without the timings."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        e = json.loads(line)
        e.pop("tokens_per_s", None)
        out.append(e)
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def setup(tiny_neo, tmp_path_factory):
    """(model dir, data dir, the uninterrupted reference run)."""
    root = tmp_path_factory.mktemp("resume")
    data = write_kaggle_dir(root / "data")
    ref = root / "reference"
    assert main(_argv(tiny_neo, data, ref)) == 0
    results = json.loads((ref / "results.json").read_text())
    # validation improves at every epoch, so RUN/adapter holds the final weights
    assert results["steps"] == STEPS and results["best_step"] == STEPS
    return tiny_neo, data, ref


def _start(argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sumtune.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_for(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> None:
    """Until metrics.jsonl shows a training event at `step` or later."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = run / "metrics.jsonl"
        if path.is_file():
            steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]
            if steps and max(steps) >= step:
                return
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the run did not reach step {step} in time")


def _kill_mid_epoch(model: Path, data: Path, run: Path, cwd: Path | None = None) -> list[str]:
    """Run in a subprocess (`run` relative to `cwd` when given), SIGKILL it after its second checkpoint
    while mid-epoch; the checkpoints left."""
    proc = _start(_argv(model, data, run.relative_to(cwd) if cwd else run), cwd)
    _wait_for(proc, run, 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = [p.name for p in ck.list_checkpoints(run / "checkpoints")]
    last = max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines())
    assert len(names) == 2 and int(names[-1].removeprefix("step-")) < last < STEPS  # killed mid-way, work lost
    assert not (run / "results.json").exists()
    return names


def _same_as_reference(run: Path, ref: Path) -> None:
    assert _events(run) == _events(ref)  # every logged loss, lr and grad norm, bit for bit
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "results.json").read_text())["finished"] is True
    assert not (run / "checkpoints").exists()


def test_sigkill_then_resume_is_bit_identical(setup, tmp_path):
    model, data, ref = setup
    run = tmp_path / "run"
    names = _kill_mid_epoch(model, data, run)
    assert names == ["step-0000002", "step-0000004"]  # the last two (step 4 is also the end of epoch 1)
    assert main(_argv(model, data, run, "--resume")) == 0
    _same_as_reference(run, ref)


def test_resume_from_the_runs_own_config_alone(setup, tmp_path, monkeypatch, capsys):
    """`train --config RUN/config.yaml --resume`, no other flag: the method and every setting come from
    the run's config, the run from where that file is (here its recorded output_dir is relative to
    the directory it started in, and the resume runs from another one)."""
    model, data, ref = setup
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    run = start / "run"
    _kill_mid_epoch(model, data, run, cwd=start)
    assert load_run_config(run).output_dir == "run" and load_run_config(run).method.name == "lora"
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(run / "config.yaml"), "--resume"]) == 0
    _same_as_reference(run, ref)
    assert not (elsewhere / "run").exists()
    # a config that names no method still needs --method, said in one line
    preset = tmp_path / "preset.yaml"
    preset.write_text("train:\n  epochs: 1\n")
    capsys.readouterr()
    assert main(["train", "--config", str(preset)]) == 2
    err = capsys.readouterr().err.strip()
    assert "required: --method" in err and "method.name" in err and "\n" not in err


def test_corrupt_latest_checkpoint_falls_back_and_changes_are_refused(setup, tmp_path, caplog, capsys):
    model, data, ref = setup
    run = tmp_path / "run"
    older, latest = _kill_mid_epoch(model, data, run)
    # a resume that would change the training is refused in one line, naming the key, changing nothing
    config = (run / "config.yaml").read_bytes()
    assert main(_argv(model, data, run, "--resume", "--lr", "1e-3")) == 2
    err = capsys.readouterr().err.strip()
    assert "train.lr was 0.003, now 0.001" in err and "--resume" in err and "\n" not in err
    assert main(_argv(model, data, run, "--resume", "--batch-size", "4")) == 2
    assert "batch_size x grad_accum x processes" in capsys.readouterr().err
    assert main(_argv(model, data, run)) == 2  # without --resume: never clobbered
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == config

    weights = run / "checkpoints" / latest / "trainable.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        assert main(_argv(model, data, run, "--resume")) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and latest in warnings[0] and "falling back" in warnings[0]
    assert f"from {older}" in capsys.readouterr().out
    _same_as_reference(run, ref)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(setup, tmp_path):
    model, data, ref = setup
    run = tmp_path / "run"
    proc = _start(_argv(model, data, run, "--set", "train.save_steps=0"))  # no periodic checkpoints
    _wait_for(proc, run, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted after step" in out and "--resume" in out
    left = ck.list_checkpoints(run / "checkpoints")
    assert len(left) == 1 and not (run / "results.json").exists()
    assert main(_argv(model, data, run, "--resume")) == 0
    _same_as_reference(run, ref)


# --- the checkpoint pieces ---------------------------------------------------


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = [{"params": [net[0].weight], "weight_decay": 0.1},
              {"params": [net[0].bias, *net[1].parameters()], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    tensors, meta = ck.optimizer_to_files(opt.state_dict())
    atomic_save_tensors(tmp_path / "o.safetensors", tensors)
    (tmp_path / "o.json").write_text(json.dumps(meta))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW([{"params": [twin[0].weight], "weight_decay": 0.1},
                              {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0}], lr=1e-2)
    opt2.load_state_dict(ck.optimizer_from_files(load_tensors(tmp_path / "o.safetensors"),
                                                 json.loads((tmp_path / "o.json").read_text())))
    for o, n in ((opt, net), (opt2, twin)):  # one more step each: identical
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(ck.rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_checkpoints_keep_the_last_two_and_verify_their_manifest(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ck.save_checkpoint(root, step, {"w.safetensors": {"w": torch.full((4,), float(step))}, "s.json": {"step": step}})
    assert [p.name for p in ck.list_checkpoints(root)] == ["step-0000002", "step-0000003"]
    (root / ".step-0000004.tmpabc").mkdir()  # a half-written one under its temporary name: ignored
    path, files = ck.latest_checkpoint(root)
    assert path.name == "step-0000003" and files["s.json"] == {"step": 3} and files["w.safetensors"]["w"][0] == 3

    (root / "step-0000003" / "s.json").write_text('{"step": 30}')  # changed after writing
    path, files = ck.latest_checkpoint(root, warn=logging.getLogger("t").warning)
    assert path.name == "step-0000002" and files["s.json"] == {"step": 2}
    (root / "step-0000002" / ck.MANIFEST).unlink()
    with pytest.raises(UserError, match=r"no usable checkpoint .*\(all 2 are corrupt\)"):
        ck.latest_checkpoint(root)
    assert ck.latest_checkpoint(tmp_path / "none") is None


def test_staged_shards_move_in_under_the_manifest_and_unlisted_files_are_refused(tmp_path):
    root, stage = tmp_path / "checkpoints", tmp_path / "checkpoints" / ".shards-0000001"
    atomic_save_tensors(stage / "sharded" / "shard-1.safetensors", {"w": torch.ones(2)})
    path = ck.save_checkpoint(root, 1, {"t.safetensors": {"t": torch.zeros(1)}, "s.json": {}}, staged=stage)
    assert not stage.exists()
    manifest = json.loads((path / ck.MANIFEST).read_text())
    assert sorted(manifest) == ["s.json", "sharded/shard-1.safetensors", "t.safetensors"]
    files = ck.load_checkpoint(path)
    assert files["sharded/shard-1.safetensors"] == path / "sharded" / "shard-1.safetensors"  # read sliced, not here
    assert torch.equal(files["t.safetensors"]["t"], torch.zeros(1))
    assert ck.load_checkpoint(path, tensors=False)["t.safetensors"] == path / "t.safetensors"
    atomic_save_tensors(path / "sharded" / "shard-2.safetensors", {"w": torch.ones(2)})  # e.g. another run's leftover
    with pytest.raises(ck.CorruptCheckpoint, match=r"shard-2.safetensors: not in the manifest"):
        ck.load_checkpoint(path)
