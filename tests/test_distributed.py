"""Distributed evaluation: `accelerate launch --multi_gpu --num_processes 2 -m sumtune.cli
evaluate RUN` on two CPU processes writes the predictions.jsonl of one process byte for byte
and its metrics.json but for the timings (greedy and beam search), because each process
decodes and scores whole batches of the one-process batch order (sumtune.distributed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from method_utils import main_one_thread, make_run

from sumtune.distributed import batch_order, batch_shard, gather_in_order

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sumtune.cli"]
TIMINGS = ("generation_seconds", "summaries_per_s", "loss_seconds")


def test_batch_shard_deals_whole_batches_that_a_length_sort_rebuilds():
    lengths = [5, 9, 9, 2, 7, 7, 1]
    batches = batch_order(lengths, 2)
    assert batches == [[1, 2], [4, 5], [0, 3], [6]]
    mine = [batch_shard(lengths, 2, r, 2) for r in range(2)]
    assert mine == [[1, 2, 0, 3], [4, 5, 6]]
    for m in mine:  # Generator.generate sorts by length (stable) and cuts per_batch at a time
        again = sorted(m, key=lambda i: -lengths[i])
        assert [again[s:s + 2] for s in range(0, len(again), 2)] == [b for b in batches if b[0] in m]

    class One:
        num_processes = 1

    assert gather_in_order(["b", "a"], [1, 0], 2, One()) == ["a", "b"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU multi-process test")
@pytest.mark.parametrize("flags", [("--batch-size", "3"), ("--batch-size", "4", "--num-beams", "2")],
                         ids=["greedy", "beam"])
def test_two_process_evaluate_writes_what_one_process_writes(flags, tiny_neo, kaggle_dir, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", sets=(f"data.source={kaggle_dir}", "method.r=4"))
    argv = ["evaluate", str(run), "--split", "test", "--max-new-tokens", "12", *flags]
    main_one_thread(argv)
    one = tmp_path / "one"
    shutil.copytree(run / "eval" / "test", one)
    shutil.rmtree(run / "eval")
    proc = subprocess.run([*LAUNCH, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = run / "eval" / "test"
    assert (two / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    for key in TIMINGS:
        m2.pop(key), m1.pop(key)
    assert (m2.pop("processes"), m1.pop("processes")) == (2, 1)  # the basis of the projected full-split cost
    assert m2 == m1 and m1["n"] == 8
    assert proc.stdout.count("wrote ") == 1  # the main process writes and reports, once
