"""`sumtune serve` under a real burst on the real model (SmolLM2-135M-Instruct): bench/serve_load.py
starts the command on 127.0.0.1 with two runs (zero-shot and a 2-step LoRA) and sends 20 valid
requests at once (half cnndm beam search, half greedy, both runs each) and 20 malformed ones.
Every valid request is answered or refused at once with 503 + Retry-After, none times out (504),
every malformed one gets a 4xx, and afterwards the server is up with nothing queued or decoding.
Slow: a 135M model decoding on a CPU for up to the 120 s timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_real_model import _train, real_model  # noqa: F401  (the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import serve_load  # noqa: E402

pytestmark = pytest.mark.slow


def test_serve_holds_a_burst_of_20_valid_and_20_malformed_requests(real_model, tmp_path):  # noqa: F811
    zero = _train(tmp_path, real_model, "zero_shot", 1)
    lora = _train(tmp_path, real_model, "lora", 2, ["--lr", "1e-3"])
    report = serve_load.main([str(zero), str(lora), "--valid", "20", "--malformed", "20", "--timeout", "120",
                              "--json"])
    assert report["failures"] == []
    valid = report["valid"].values()
    assert sum(v["sent"] for v in valid) == 20
    assert sum(v["answered"] + v["refused_503_with_retry_after"] for v in valid) == 20
    assert sum(v["timed_out_504"] for v in valid) == 0
    assert sum(v["answered"] for v in valid) >= 1  # work was done: no 504 after it either
    assert report["malformed"]["refused_4xx"] == 20
    health = report["health_after"]
    assert health["status"] == "ok" and health["queued"] == 0 and health["decoding"] == 0
