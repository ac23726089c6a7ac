"""CUDA-only checks (marked `cuda`: skipped without a CUDA device; bench/gpu_check.sh runs
them on a lent GPU): bf16 training on the GPU, gradient checkpointing lowering peak memory
with the same losses, FSDP2 with CPU offload on one GPU training as the unsharded run."""

from __future__ import annotations

import json

import pytest

from sumtune.cli import main

pytestmark = pytest.mark.cuda


def _train(model, data, out, *extra) -> dict:
    argv = ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "1", "--max-train-samples", "16", "--batch-size", "4", "--grad-accum", "2",
            "--max-length", "256", "--lr", "1e-2", "--set", "data.max_summary_length=64", "--set", "method.r=4",
            "--set", "method.dropout=0", *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_bf16_training_on_cuda(tiny_neo, kaggle_dir, tmp_path):
    res = _train(tiny_neo, kaggle_dir, tmp_path / "r", "--precision", "bf16")
    assert res["precision"] == "bf16" and res["peak_memory_kind"].startswith("cuda") and res["peak_memory_mb"] > 0


def test_gradient_checkpointing_on_cuda_same_losses_less_memory(tiny_neo, kaggle_dir, tmp_path):
    off = _train(tiny_neo, kaggle_dir, tmp_path / "off", "--precision", "fp32")
    on = _train(tiny_neo, kaggle_dir, tmp_path / "on", "--precision", "fp32", "--set", "train.gradient_checkpointing=true")
    for a, b in zip(_losses(tmp_path / "on"), _losses(tmp_path / "off"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    print(f"peak CUDA memory: checkpointing off {off['peak_memory_mb']:.1f} MB, on {on['peak_memory_mb']:.1f} MB")
    assert on["peak_memory_mb"] <= off["peak_memory_mb"]


def test_fsdp_cpu_offload_on_one_gpu_trains_as_unsharded(tiny_neo, kaggle_dir, tmp_path):
    plain = _train(tiny_neo, kaggle_dir, tmp_path / "plain", "--precision", "fp32")
    off = _train(tiny_neo, kaggle_dir, tmp_path / "offload", "--precision", "fp32",
                 "--set", "train.fsdp=true", "--set", "train.cpu_offload=true")
    assert off["distributed"]["cpu_offload"] is True and off["distributed"]["fsdp_version"] == 2
    for a, b in zip(_losses(tmp_path / "offload"), _losses(tmp_path / "plain"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    print(f"peak CUDA memory: plain {plain['peak_memory_mb']:.1f} MB, FSDP + CPU offload {off['peak_memory_mb']:.1f} MB")
