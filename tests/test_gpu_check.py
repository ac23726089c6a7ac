"""bench/gpu_check.sh without a GPU: the dry run lists every check and starts every script, a
problem it finds fails it loudly, and the real run fails loudly without a CUDA device."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
CHECKS = ["cuda_device", "python_packages", "make_data", "cuda_tests", "throughput_lora", "throughput_prompt_tuning",
          "throughput_last_layers", "throughput_lora_llama", "throughput_prompt_tuning_llama", "generate_cnndm",
          "generate_cnndm_llama", "qlora"]


def _run(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    peer = tmp_path / "peer" / "peer_hf_trainer.py"  # the dry run only checks that the peer's scripts exist
    peer.parent.mkdir(exist_ok=True)
    peer.write_text("")
    (peer.parent / "make_token_data.py").write_text("")
    full = {**os.environ, "PYTHON": sys.executable, "PEER": str(peer), "OUT_DIR": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=600)


def _generate_has(flag: str) -> bool:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    return re.search(re.escape(flag) + r"\b", out) is not None


def test_dry_run_lists_every_check_with_caps_under_ten_minutes(tmp_path):
    r = _run(tmp_path, "--dry-run")
    listed = re.findall(r"^check (\w+) \(cap (\d+) s\): (.+)$", r.stdout, re.M)
    assert [name for name, _, _ in listed] == CHECKS, r.stdout + r.stderr
    assert sum(int(cap) for _, cap, _ in listed) < 600
    commands = {name: cmd for name, _, cmd in listed}
    assert "-m cuda" in commands["cuda_tests"]
    for method in ("lora", "prompt_tuning", "last_layers"):
        assert f"--method {method}" in commands[f"throughput_{method}"]
        assert "--precision bf16" in commands[f"throughput_{method}"]
    for method in ("lora", "prompt_tuning"):
        assert "--model smollm2-135m-random" in commands[f"throughput_{method}_llama"]
    assert "--decoding cnndm" in commands["generate_cnndm"] and "--json" in commands["generate_cnndm"]
    assert "--model smollm2-135m-random" in commands["generate_cnndm_llama"]
    assert "bench/qlora_check.py" in commands["qlora"]
    # the scripts start; generate.py's cnndm flags come from task 5's bench/generate.py: without them the
    # dry run must say so and fail, with them it must pass
    assert "does not start" not in r.stdout, r.stdout
    if _generate_has("--decoding") and _generate_has("--peers"):
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.rstrip().endswith("dry run: ok")
    else:
        assert r.returncode == 1 and "FAILED: dry run: bench/generate.py has no --" in r.stdout


def test_dry_run_fails_loudly_on_a_script_that_does_not_start(tmp_path):
    r = _run(tmp_path, "--dry-run", GENERATE_FLAGS="--no-such-flag 1", PEER=str(tmp_path / "absent.py"))
    assert r.returncode == 1
    assert "FAILED: dry run: bench/generate.py has no --no-such-flag" in r.stdout
    assert f"FAILED: dry run: no peer script at {tmp_path / 'absent.py'}" in r.stdout


def test_bad_argument_is_refused(tmp_path):
    r = _run(tmp_path, "--fast")
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without a CUDA device")
def test_without_cuda_the_run_fails_loudly_and_runs_nothing_else(tmp_path):
    import json

    r = _run(tmp_path)
    assert r.returncode == 1
    assert "FAILED: cuda_device" in r.stdout and "no CUDA device" in r.stdout
    summary = json.loads([line for line in r.stdout.splitlines() if line.startswith('{"gpu_check"')][-1])
    assert summary["ok"] is False and summary["failed"] == CHECKS
    assert summary["checks"]["throughput_lora"]["not_run"] == "no usable CUDA device"
    assert not (tmp_path / "out" / "throughput_lora.log").exists()
