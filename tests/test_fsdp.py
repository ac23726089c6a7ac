"""FSDP2 on two CPU processes (gloo): `accelerate launch --use_fsdp --fsdp_version 2` shards
the model (training.sharding) and trains what one process trains on the same samples; a
sharded run killed with SIGKILL and resumed ends bit-identical to the uninterrupted sharded
run; one saved at 2 processes resumes at 1 and one saved at 1 resumes at 2 (resharded), the
loss curve continuing within rounding; the best weights are PEFT's usual adapter.

Tolerances: the two-process losses and weights differ from one process's only by the order
of float32 sums (gloo's reduce-scatter adds the two halves of a gradient, one process adds all
rows at once; the 1-process run also uses the label-position loss, which FSDP turns off), so
losses agree to 1e-5 relative and weights to 1e-5 absolute after 6 AdamW steps at lr 1e-2 —
as test_accelerate's DDP check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from method_utils import main_one_thread
from test_resume import _events

from sumtune.checkpoint import list_checkpoints
from sumtune.io import load_tensors

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")



def _launch(processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "sumtune.cli"]


FSDP_LAUNCH = _launch(2)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _argv(method, model, data, out, batch: int, *extra: str) -> list[str]:
    # 22 samples, 8 per step: the last step of each epoch leaves the second process a filler
    return ["train", "--method", method, "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "2", "--max-train-samples", "22", "--batch-size", str(batch), "--grad-accum", "2",
            "--max-length", "192", "--lr", "1e-2" if method == "lora" else "1e-3", "--precision", "fp32",
            "--set", "data.max_summary_length=64", "--set", "method.lora.r=4", "--set", "train.eval_steps=2", *extra]


@pytest.mark.parametrize("method,weights", [("lora", "adapter_model.safetensors"), ("full", "weights.safetensors")])
def test_fsdp_two_processes_equalmain_one_thread(method, weights, tiny_neo, kaggle_dir, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run([*FSDP_LAUNCH, *_argv(method, tiny_neo, kaggle_dir, two, 2, "--set", "method.lora.dropout=0")],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    main_one_thread(_argv(method, tiny_neo, kaggle_dir, one, 4, "--set", "method.lora.dropout=0"))

    res2, res1 = (json.loads((r / "results.json").read_text()) for r in (two, one))
    assert res2["distributed"] == {"type": "MULTI_CPU", "processes": 2, "fsdp_version": 2, "cpu_offload": False,
                                   "launched_with_fsdp": True}
    assert res1["distributed"]["fsdp_version"] is None and res2["steps"] == res1["steps"] == 6
    for a, b in zip(*(_events(r) for r in (two, one)), strict=True):
        assert (a["step"], a["split"]) == (b["step"], b["split"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w2, w1 = (load_tensors(r / "adapter" / weights) for r in (two, one))
    assert w2.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
    if method == "lora":  # the gathered adapter is PEFT's own and loads as a run
        from sumtune.runs import load_run

        _cfg, _m, model, _tok = load_run(two)
        assert any("lora_B" in n and float(p.abs().max()) > 1e-3 for n, p in model.named_parameters())


def _kill_after(argv: list[str], run, step: int, processes: int = 2) -> None:
    """Start an FSDP run in its own process group; SIGKILL the whole group once
    metrics.jsonl shows `step` (mid-epoch, after a checkpoint)."""
    proc = subprocess.Popen([*_launch(processes), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 240:
        path = run / "metrics.jsonl"
        if path.is_file() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x.strip()):
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_fsdp_sigkill_and_resume_equals_uninterrupted(tiny_neo, kaggle_dir, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = ("--set", "method.dropout=0.1", "--set", "train.save_steps=2")  # dropout: every process's RNG restored
    proc = subprocess.run([*FSDP_LAUNCH, *_argv("lora", tiny_neo, kaggle_dir, ref, 2, *extra)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _kill_after(_argv("lora", tiny_neo, kaggle_dir, run, 2, *extra), run, 5)
    kept = list_checkpoints(run / "checkpoints")
    assert kept and not (run / "results.json").exists()
    names = sorted(p.name for p in (kept[-1] / "sharded").iterdir())  # sharded: one file per process
    assert names == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    proc = subprocess.run([*FSDP_LAUNCH, *_argv("lora", tiny_neo, kaggle_dir, run, 2, *extra), "--resume"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _events(run) == _events(ref)  # every loss, lr and grad norm, bit for bit
    a, b = (load_tensors(r / "adapter" / "adapter_model.safetensors") for r in (run, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_fsdp_resumes_with_another_number_of_processes(before, after, tiny_neo, kaggle_dir, tmp_path):
    """Killed at `before` processes, resumed at `after` with the same samples per step
    (batch 4 // processes x grad_accum 2 x processes = 8): the same rows each step, so the
    curve continues the uninterrupted `before` run: bit-identical up to the checkpoint, within
    rel 1e-5 after it (float sums over other processes, as the equal-to-one-process test;
    dropout off, as per-process generators cannot carry over to other processes)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = ("--set", "method.dropout=0", "--set", "train.save_steps=2")
    proc = subprocess.run([*_launch(before), *_argv("lora", tiny_neo, kaggle_dir, ref, 4 // before, *extra)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _kill_after(_argv("lora", tiny_neo, kaggle_dir, run, 4 // before, *extra), run, 5, before)
    last = list_checkpoints(run / "checkpoints")[-1]
    at = int(last.name.removeprefix("step-"))
    files = sorted(p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files), files  # nothing pickled (no DCP .metadata)
    if before == 2:
        assert "sharded/shard-00002-model-00001-of-00001.safetensors" in files and "trainable.safetensors" not in files
    else:
        assert "trainable.safetensors" in files and "shards.json" not in files  # one process trains unsharded
    if after == 1:  # the batch size unchanged: 4 samples a step, not 8; refused in one line naming the fix
        proc = subprocess.run([sys.executable, "-m", "sumtune.cli", *_argv("lora", tiny_neo, kaggle_dir, run, 2, *extra),
                               "--resume"], capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 2 and "a step took 8 samples" in proc.stderr, proc.stderr[-3000:]
        assert "now 4; keep that product as it was (--batch-size 4 with 1 process)" in proc.stderr
    proc = subprocess.run([*_launch(after), *_argv("lora", tiny_neo, kaggle_dir, run, 4 // after, *extra), "--resume"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"(step {at}, saved by {before} processes, now {after})" in proc.stdout
    res = json.loads((run / "results.json").read_text())
    assert res["distributed"]["processes"] == after and res["steps"] == 6
    got, want = _events(run), _events(ref)
    assert [(e["step"], e["split"]) for e in got] == [(e["step"], e["split"]) for e in want]
    assert [e for e in got if e["step"] <= at] == [e for e in want if e["step"] <= at]
    for a, b in ((a, b) for a, b in zip(got, want) if a["step"] > at):
        for key in ("loss", "lr", "grad_norm", "tokens"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)
    w, w_ref = (load_tensors(r / "adapter" / "adapter_model.safetensors") for r in (run, ref))
    assert w.keys() == w_ref.keys()
    for k in w:
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=1e-5)


def test_a_checkpoint_in_the_earlier_per_process_format_is_refused(tmp_path):
    """Per-process files without DCP's offsets cannot be resharded: one line."""
    from sumtune.errors import UserError
    from sumtune.runs import RunDir
    from sumtune.training.resume import load_tensors_into

    files = {"shards.json": {"processes": 2, "fsdp_version": 2}}
    with pytest.raises(UserError, match="per-process format of an earlier sumtune"):
        load_tensors_into(RunDir(tmp_path), tmp_path / "step-0000002", files, torch.nn.Linear(2, 2), None, None)
