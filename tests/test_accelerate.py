"""`sumtune train` under `accelerate launch`: two CPU processes with batch 2 each give the
weights of one process with batch 4 over the same samples.

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes 2` starts the
processes through torchrun and the trainer runs them as multi-CPU DDP over gloo
(`accelerate launch --cpu --num_processes N` starts a single process unless MPI is set up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sumtune.cli import main
from sumtune.io import load_tensors

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")


def _argv(model, data, out, batch: int) -> list[str]:
    # 22 samples, 8 per step: the last step of each epoch has 6, so in its second micro-step
    # the second process has no sample left and runs a batch without targets
    return ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "2", "--max-train-samples", "22", "--batch-size", str(batch), "--grad-accum", "2",
            "--max-length", "192", "--lr", "1e-2", "--precision", "fp32", "--set", "data.max_summary_length=64",
            "--set", "method.r=4", "--set", "method.dropout=0", "--set", "train.eval_steps=2"]


def test_two_processes_equal_one_process_with_the_same_samples(tiny_neo, kaggle_dir, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sumtune.cli"]
    proc = subprocess.run([*launch, *_argv(tiny_neo, kaggle_dir, two, 2)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_argv(tiny_neo, kaggle_dir, one, 4)) == 0
    finally:
        torch.set_num_threads(threads)

    res2, res1 = (json.loads((r / "results.json").read_text()) for r in (two, one))
    assert res2["processes"] == 2 and res1["processes"] == 1 and res2["steps"] == res1["steps"] == 6
    # the same global samples per step: the same losses, and the same weights
    events = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (two, one)]
    assert [(e["step"], e["split"]) for e in events[0]] == [(e["step"], e["split"]) for e in events[1]]
    for a, b in zip(*events):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w2, w1 = (load_tensors(r / "adapter" / "adapter_model.safetensors") for r in (two, one))
    assert w2.keys() == w1.keys()
    for k in w1:  # "within 1e-5": gloo's all-reduce sums in another order than one process does
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 1e-3  # it did train
