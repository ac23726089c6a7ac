"""No network I/O when every source is local; a Hub name fails in one line, at once,
when the Hub is unreachable (the probe is patched: no real network here)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sumtune import offline
from sumtune.config import DataConfig
from sumtune.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_local_only():
    assert offline.local_only("/models/neo", "data/train.csv")
    assert offline.local_only(None, "cnndm_dir")
    assert offline.local_only("./neo", None)
    assert not offline.local_only("EleutherAI/gpt-neo-125m", "data.csv")
    assert not offline.local_only("/models/neo", "hf:abisee/cnn_dailymail:3.0.0")
    assert not offline.local_only(None, None)


_GUARDED = textwrap.dedent("""
    import socket, sys
    attempts = []
    def deny(*a, **k):
        attempts.append(repr(a)[:80])
        raise OSError("network blocked by the test")
    socket.socket.connect = lambda self, addr: deny(addr)
    socket.socket.connect_ex = lambda self, addr: deny(addr)
    socket.getaddrinfo = deny
    socket.create_connection = deny
    model, data, apply = sys.argv[1], sys.argv[2], sys.argv[3] == "apply"
    from sumtune.offline import apply_offline_env
    if apply:
        assert apply_offline_env(model, data)
    from sumtune.config import DataConfig
    from sumtune.data import load_splits
    from sumtune.modeling import load_model, load_tokenizer
    load_splits(DataConfig(source=data, num_proc=1), 0)
    load_tokenizer(model)
    load_model(model)
    print("ATTEMPTS", len(attempts), attempts[:3])
""")


def _run_guarded(tmp_path: Path, model: Path, data: Path, apply: bool) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and not k.startswith("HF_")}
    env.update(PYTHONPATH=SRC, HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_CACHE=str(tmp_path / f"ds_{apply}"),
               HF_HUB_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-c", _GUARDED, str(model), str(data), "apply" if apply else "no"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_local_sources_make_no_network_call(tiny_neo, kaggle_dir, tmp_path):
    csv = kaggle_dir / "train.csv"
    assert "ATTEMPTS 0 " in _run_guarded(tmp_path, tiny_neo, csv, apply=True)


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path):
    """Online mode as a user has it, but the probe finds the Hub unreachable; any real
    connection attempt fails at once (and is counted)."""
    import socket

    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(offline, "_probed", {})
    probes = []
    monkeypatch.setattr(offline, "reachable", lambda host, port, timeout=0: probes.append((host, port)) or False)
    connects = []

    def deny(self, addr):
        connects.append(addr)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", deny)
    return probes, connects


@pytest.mark.parametrize("what", ["tokenizer", "model"])
def test_hub_name_fails_fast_when_unreachable(hub_unreachable, what):
    from sumtune.modeling import load_model, load_tokenizer

    probes, connects = hub_unreachable
    t = time.perf_counter()
    with pytest.raises(UserError) as e:
        (load_tokenizer if what == "tokenizer" else load_model)("sumtune-test/not-cached-model")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "\n" not in msg and "cannot download" in msg and "--model DIR" in msg
    assert probes and not connects
    assert offline.hub_offline()  # the rest of the process does not retry either


def test_hub_dataset_fails_fast_when_unreachable(hub_unreachable):
    from sumtune.data import load_splits

    probes, connects = hub_unreachable
    t = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_splits(DataConfig(source="hf:sumtune-test/not-cached-data", num_proc=1), 0)
    assert time.perf_counter() - t < 5
    assert "\n" not in str(e.value) and "not in the local cache" in str(e.value)
    assert probes and not connects


def test_probe_is_bounded():
    """A port nobody listens on: refused (or dropped) within the timeout."""
    t = time.perf_counter()
    assert not offline.reachable("127.0.0.1", 9, timeout=1.0)
    assert time.perf_counter() - t < 2
