"""The benchmarks' pure helpers: the study-cost projection (bench/study_cost.py) and the op families
of bench/profile_step.py (bench/op_families.py), against figures worked out by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import op_families  # noqa: E402
import study_cost  # noqa: E402


def test_training_hours_plain_and_feature_cached():
    lora = {"method": "lora", "sumtune_tokens_per_s": 500.0}
    assert study_cost.training_hours(lora, 21000, 600, 10) == pytest.approx(21000 * 600 * 10 / 500 / 3600)
    # last_layers: 10 bench epochs took 2.8 x the first, so each later epoch costs 0.2 of the first
    head = {"method": "last_layers", "sumtune_tokens_per_s": 1000.0, "epochs": 10, "epochs_over_first": 2.8}
    first = 21000 * 600 / 1000
    assert study_cost.training_hours(head, 21000, 600, 5) == pytest.approx(first * (1 + 0.2 * 4) / 3600)


def test_study_cost_reads_the_bench_lines(tmp_path, capsys):
    (tmp_path / "t.json").write_text("rep 0 ...\n" + json.dumps(
        {"method": "prompt_tuning", "sumtune_tokens_per_s": 720.0, "mean_row_tokens": 600.0, "precision": "bf16"}))
    (tmp_path / "g.json").write_text(json.dumps({"sumtune_summaries_per_s": 2.0, "max_new_tokens": 128}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 3\n")
    out = study_cost.main(["--throughput", str(tmp_path / "t.json"), "--generate", str(tmp_path / "g.json"),
                           "--config", str(cfg), "--rows", "1200", "--test-articles", "7200"])
    assert out["train_hours"] == {"prompt_tuning": 0.8}  # 1200 x 600 x 3 / 720 = 3000 s
    assert out["decode_hours"] == 1.0 and out["epochs"] == 3


def test_op_families_split_a_real_profile_by_family_and_phase():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 64, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        torch.nn.functional.gelu(torch.nn.functional.layer_norm(x, (64,)) @ x).sum().backward()
    seconds, gemm_flops = op_families.by_family(prof.events())
    assert gemm_flops == 3 * 2 * 64**3  # the forward mm and its two backward mms
    for key in [("gemm", "forward"), ("gemm", "backward"), ("gelu", "forward"), ("gelu", "backward"),
                ("norm", "forward"), ("norm", "backward")]:
        assert seconds[key] > 0, key
    assert op_families.family_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert op_families.family_of("aten::_fused_adamw_") == "optimizer"
    assert op_families.family_of("aten::random_") == "dropout"
    assert op_families.family_of("aten::copy_") == "cast"


def test_throughput_summary_names_the_peak_of_the_runs_precision(capsys):
    """An fp32 run's MFU is over the fp32 matmul peak, and the line says so (not bf16's figure)."""
    import throughput

    r = {"method": "lora", "precision": "fp32", "rows": 8, "mean_row_tokens": 600.0, "reps": 3,
         "sumtune_tokens_per_s": 50.0, "peer_tokens_per_s": 25.0, "ratio": 2.0, "sumtune_peak_rss_mb": 3000,
         "peer_peak_rss_mb": 7000, "rss_ratio": 0.43, "sumtune_mfu": 0.2, "peer_mfu": 0.1, "mfu_peak": "fp32",
         "peak": {"device": "cpu", "bf16_flops": 0.6, "fp32_flops": 55.9}}
    throughput.print_summary(r, 1)
    out = capsys.readouterr().out
    assert "of a 55.9 GFLOP/s fp32 matmul peak" in out and "bf16 matmul" not in out
