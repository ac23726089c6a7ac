"""bench/generate.py on a tiny model: its batched `generate` peer (left padding, SDPA, the n-gram ban over the
summary only) decodes what `generate` does at batch 1, and the report has both peers' rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import generate as bench  # noqa: E402

from sumtune.modeling import load_tokenizer  # noqa: E402
from sumtune.tiny import synthetic_news  # noqa: E402


def _token_file(tiny: Path, out: Path, n: int = 5) -> Path:
    """make_token_data.py's format with real text of the tiny tokenizer, prompts of different lengths."""
    tok = load_tokenizer(str(tiny))
    rows = []
    for i, r in enumerate(synthetic_news(n, seed=4)):
        art = tok(r["article"])["input_ids"][: 20 + 7 * i]
        summ = tok(r["highlights"])["input_ids"][:8]
        rows.append({"input_ids": art + summ, "labels": [-100] * len(art) + summ})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.mark.parametrize("arch,decoding", [("gpt_neo", "greedy"), ("gpt_neo", "cnndm"), ("llama", "cnndm")])
def test_bench_peers_agree_in_fp32(arch, decoding, tiny_family, tmp_path, capsys):
    """GPT-Neo, and a Llama-layout config (grouped-query attention, the lean decode step's phases timed too)."""
    tiny = tiny_family(arch)
    data = _token_file(tiny, tmp_path / "tokens.jsonl")
    r = bench.main(["--data", str(data), "--model", str(tiny), "--decoding", decoding, "--n", "5",
                    "--max-new-tokens", "12", "--min-new-tokens", "4", "--batch-size", "8", "--reps", "1",
                    "--precision", "fp32", "--stream-mb", "8", "--json"])
    assert set(r["peers"]) == {"hf_batched", "hf_batch1"}
    for name, row in r["peers"].items():
        assert row["vs_sumtune"]["identical"] == 5, (name, row["vs_sumtune"])
        assert row["ratio"] > 0 and row["cpu_ratio"] > 0 and row["summaries_per_s"] > 0 and row["tokens_per_s"] > 0
    assert r["hf_batched_vs_hf_batch1_identical"] == 5
    assert r["num_beams"] == (4 if decoding == "cnndm" else 1) and r["prompts_per_batch"] == (2 if decoding == "cnndm" else 8)
    s = r["sumtune"]
    assert s["steps"] > 0 and s["prefill_gflops"] > 0 and s["step_gb_per_s"] > 0
    assert r["identical_prompts"] == 5 and r["ratio"] == r["peers"]["hf_batch1"]["ratio"]  # gpu_check.sh's keys
    out = capsys.readouterr().out
    assert "HF generate batch" in out and "HF generate batch 1, eager" in out
    assert json.loads(out.strip().splitlines()[-1])["decoding"] == decoding


def test_summary_no_repeat_bans_generated_ngrams_only():
    import torch

    proc = bench.SummaryNoRepeat(prompt_len=4, n=2)
    ids = torch.tensor([[5, 6, 5, 6, 1, 2, 1], [5, 6, 5, 6, 3, 4, 5]])  # prompt repeats 5 6; summaries 1 2 1 / 3 4 5
    scores = proc(ids, torch.zeros(2, 10))
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[0]).sum() == 1  # "1 2" seen in the summary: 2 banned
    assert not torch.isinf(scores[1]).any()  # "5 6" is only in the prompt


def test_bench_in_bf16_measures_the_rounding_that_parts_the_sides(tiny_family, tmp_path, capsys):
    tiny = tiny_family("llama")
    data = _token_file(tiny, tmp_path / "tokens.jsonl")
    r = bench.main(["--data", str(data), "--model", str(tiny), "--decoding", "cnndm", "--n", "3", "--max-new-tokens", "8",
                    "--min-new-tokens", "2", "--reps", "1", "--precision", "bf16", "--peers", "hf_batched",
                    "--stream-mb", "8"])
    noise = r["bf16_logprob_noise"]
    assert 0 < noise["mean"] <= noise["p99"] and r["tie_tolerance"] == 0.1
    assert "bf16 moves the model's log-probabilities" in capsys.readouterr().out


def test_decode_batch_bench_decodes_the_same_summaries_at_each_size(tiny_family, tmp_path, capsys):
    import decode_batch

    tiny = tiny_family("llama")
    data = _token_file(tiny, tmp_path / "tokens.jsonl")
    rows = decode_batch.main(["--data", str(data), "--model", str(tiny), "--sizes", "8", "4", "--n", "3",
                              "--max-new-tokens", "6", "--json"])
    assert [r["batch_size"] for r in rows] == [4, 8] and all(r["cpu_seconds"] > 0 for r in rows)
    assert rows[1]["peak_rss_mb"] >= rows[0]["peak_rss_mb"] > 0
    assert [r["same_as_smallest"] for r in rows] == [3, 3]  # batching changes no summary in fp32
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == rows
