"""`sumtune download`: offline failures are one line that says how to pass local paths;
the files land in the layout --data / --model accept. No test touches the network:
the Hub runs in offline mode and kagglehub / snapshot_download are replaced where a
download has to "succeed"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_kaggle_dir

from sumtune import download
from sumtune.cli import main
from sumtune.config import DataConfig
from sumtune.data import load_splits
from sumtune.errors import UserError


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _one_line_exit_2(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0]
    return lines[0]


def test_model_offline(capsys, tmp_path):
    out = tmp_path / "models" / "neo"
    _one_line_exit_2(capsys, ["download", "model", "EleutherAI/gpt-neo-125m", "--out", str(out)],
                     "no internet", "--model DIR")
    assert not out.exists() and list((tmp_path / "models").iterdir()) == []


def test_hf_data_offline(capsys, tmp_path):
    out = tmp_path / "cnndm"
    _one_line_exit_2(capsys, ["download", "data", "--source", "hf", "--out", str(out)], "no internet", "--data DIR")
    assert not out.exists()


def test_kaggle_data_offline(capsys, tmp_path, monkeypatch):
    import kagglehub
    import requests

    def no_network(handle, *a, **k):
        raise requests.exceptions.ConnectionError(f"Failed to resolve 'www.kaggle.com' ({handle})")

    monkeypatch.setattr(kagglehub, "dataset_download", no_network)
    out = tmp_path / "cnndm"
    _one_line_exit_2(capsys, ["download", "data", "--source", "kaggle", "--out", str(out)],
                     "no internet", "kaggle.com", "--data DIR")
    assert not out.exists()


def test_kaggle_other_failure_is_one_line(capsys, tmp_path, monkeypatch):
    import kagglehub

    def denied(handle, *a, **k):
        raise PermissionError("403 Forbidden\nfull response body")

    monkeypatch.setattr(kagglehub, "dataset_download", denied)
    _one_line_exit_2(capsys, ["download", "data", "--source", "kaggle", "--out", str(tmp_path / "o")],
                     "Kaggle download of", "403 Forbidden", "credentials")


def test_kaggle_files_land_in_out(tmp_path, monkeypatch):
    import kagglehub

    cache = tmp_path / "kaggle_cache"
    write_kaggle_dir(cache / "cnn_dailymail", sizes=(9, 4, 4))  # the dataset's own sub-folder
    (cache / "README.txt").write_text("about")
    seen = []

    def fake(handle, *a, **k):
        seen.append(handle)
        return str(cache)

    monkeypatch.setattr(kagglehub, "dataset_download", fake)
    out = download.download_data("kaggle", None, tmp_path / "data")
    assert seen == [download.KAGGLE_HANDLE]
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv", "validation.csv"]
    assert (out / "train.csv").read_bytes() == (cache / "cnn_dailymail" / "train.csv").read_bytes()
    assert len(load_splits(DataConfig(source=str(out)), seed=0)["train"]) == 9


def test_kaggle_dataset_without_the_splits(tmp_path, monkeypatch):
    import kagglehub

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "news.csv").write_text("a,b\n1,2\n")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"no train.csv \(found: news.csv\)"):
        download.download_data("kaggle", "someone/other", tmp_path / "data")


def test_hf_data_written_in_kaggle_layout(tmp_path, monkeypatch):
    import datasets

    rows = {
        "article": ['He said "yes, of course", then left.\nA second paragraph.', "Short, one."],
        "highlights": ["He said yes .\nHe left .", "Short ."],
        "id": ["a1", "0042"],
    }
    calls = []

    def fake_load(name, conf=None, **k):
        calls.append((name, conf))
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = download.download_data("hf", None, tmp_path / "data")
    assert calls == [("abisee/cnn_dailymail", "3.0.0")]
    monkeypatch.undo()  # read back with the real loader
    splits = load_splits(DataConfig(source=str(out), clean=False), seed=0)
    back = splits["test"].to_dict()
    assert back == {"id": rows["id"], "article": rows["article"], "summary": rows["highlights"]}


def test_hf_data_not_cnn_layout(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, conf=None, **k: datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"document": ["a"], "summary": ["b"]})}))
    with pytest.raises(UserError, match="not in the CNN/DM layout.*columns document, summary.*--data hf:xsum"):
        download.download_data("hf", "xsum", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def _fake_hub(repo: Path, monkeypatch) -> list[dict]:
    """snapshot_download over a local folder, filtered by huggingface_hub's own pattern matching."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls: list[dict] = []

    def fake(repo_id, *, local_dir, allow_patterns=None, ignore_patterns=None, **k):
        calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns})
        names = [p.name for p in repo.iterdir()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            shutil.copy(repo / name, Path(local_dir) / name)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def test_model_files_are_enough_to_load(tmp_path, monkeypatch, tiny_gpt2):
    from sumtune.modeling import load_model, load_tokenizer

    repo = tmp_path / "repo"
    shutil.copytree(tiny_gpt2, repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickle")  # never fetched
    (repo / "flax_model.msgpack").write_bytes(b"x")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n")  # the card: its license goes into an export's
    calls = _fake_hub(repo, monkeypatch)
    out = download.download_model("someone/tiny", tmp_path / "m")
    assert calls[0]["repo_id"] == "someone/tiny"
    names = {p.name for p in out.iterdir()}
    assert "pytorch_model.bin" not in names and "flax_model.msgpack" not in names and ".cache" not in names
    assert (out / "README.md").read_text() == (repo / "README.md").read_text()
    assert json.loads((out / download.DOWNLOAD_RECORD).read_text()) == {"repo_id": "someone/tiny"}
    assert load_model(str(out)).config.n_embd == 64 and load_tokenizer(str(out)).eos_token_id is not None


def test_model_without_safetensors(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text("{}")
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    _fake_hub(repo, monkeypatch)
    with pytest.raises(UserError, match="no .safetensors weights"):
        download.download_model("someone/old", tmp_path / "m")
    assert not (tmp_path / "m").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_model_out_is_not_a_model_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a model directory"):
        download.download_model("someone/tiny", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
