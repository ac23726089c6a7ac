"""Offline fixtures: tiny random GPT-Neo / GPT-2 models with a BPE tokenizer trained
here on fixture text, and a small synthetic Kaggle-layout CNN/DM directory."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets' cache goes to a throwaway directory, never the user's ~/.cache
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="sumtune-test-hf-"))
# sumtune's own cache (converted GGUF files, named models) likewise
os.environ.setdefault("SUMTUNE_CACHE", tempfile.mkdtemp(prefix="sumtune-test-cache-"))

import torch  # noqa: E402

# Tiny models: one intra-op thread (ops this small gain little from more, and test processes may share cores).
torch.set_num_threads(1)

from sumtune.tiny import build_tiny_model, synthetic_news  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _texts() -> list[str]:
    rows = synthetic_news(200, seed=1)
    return [r["article"] + "\n" + r["highlights"] + "\nTL;DR:\n" for r in rows]


@pytest.fixture(scope="session")
def tiny_neo(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_neo"), _texts(), arch="gpt_neo")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_gpt2"), _texts(), arch="gpt2")


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """A builder of tiny random models by family (`sumtune.tiny.ARCHS`), each built once per session."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}"), _texts(), arch=arch)
        return built[arch]

    return get


def write_kaggle_dir(root: Path, sizes=(24, 8, 8), seed: int = 0) -> Path:
    """train/validation/test.csv with columns id, article, highlights."""
    root.mkdir(parents=True, exist_ok=True)
    rows = synthetic_news(sum(sizes), seed=seed)
    start = 0
    for split, n in zip(("train", "validation", "test"), sizes):
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
            w.writeheader()
            w.writerows(rows[start : start + n])
        start += n
    return root


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    return write_kaggle_dir(tmp_path / "cnndm")
