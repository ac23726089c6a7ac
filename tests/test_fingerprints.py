"""Fingerprints by content: a run refuses a base model whose weight values differ, and
old-scheme runs are not silently accepted; data sources are identified by their bytes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_kaggle_dir
from method_utils import make_run

from sumtune import fingerprints
from sumtune.config import DataConfig
from sumtune.errors import UserError
from sumtune.fingerprints import data_fingerprint, fingerprint, upgrade_run, weights_sha
from sumtune.modeling import load_model
from sumtune.runs import load_run


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def neo_changed(tiny_neo, tmp_path_factory) -> Path:
    """tiny_neo with one weight value changed (same files, names, sizes and shapes)."""
    from safetensors.torch import load_file, save_file

    out = Path(shutil.copytree(tiny_neo, tmp_path_factory.mktemp("neo_changed") / "model"))
    path = out / "model.safetensors"
    tensors = load_file(path)
    key = sorted(k for k in tensors if k.endswith("mlp.c_fc.weight"))[0]
    tensors[key][0, 0] += 0.5
    save_file(tensors, path, metadata={"format": "pt"})
    assert path.stat().st_size == (tiny_neo / "model.safetensors").stat().st_size
    return out


def test_weights_sha_covers_values_not_just_shapes(tiny_neo, neo_changed):
    a, b = load_model(str(tiny_neo)), load_model(str(neo_changed))
    assert weights_sha(a) != weights_sha(b)
    assert fingerprint("x", a)["config_sha"] == fingerprint("x", b)["config_sha"]
    assert weights_sha(a) == weights_sha(load_model(str(tiny_neo)))  # deterministic


def test_weights_sha_hashes_tied_tensors_once_and_is_dtype_stable(tiny_gpt2):
    model = load_model(str(tiny_gpt2))
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    before = weights_sha(model)
    # fp32 hashing: a bf16-rounded model is a different model; one loaded in fp32 is the same
    assert weights_sha(model.to(torch.bfloat16)) != before
    assert weights_sha(load_model(str(tiny_gpt2))) == before
    assert fingerprint(str(tiny_gpt2), model)["fingerprint"] == fingerprints.FINGERPRINT_VERSION


@pytest.mark.parametrize("method,sets", [("last_layers", ("method.last_k_blocks=1",)), ("lora", ("method.r=2",))])
def test_run_refuses_a_base_model_with_other_weight_values(tiny_neo, neo_changed, tmp_path, method, sets):
    run, *_ = make_run(tmp_path / "run", tiny_neo, method, sets, steps=1)
    with pytest.raises(UserError) as e:
        load_run(run, base_model=str(neo_changed))
    msg = _one_line(e)
    assert str(tiny_neo) in msg and str(neo_changed) in msg
    copy = shutil.copytree(tiny_neo, tmp_path / "identical_copy")
    assert load_run(run, base_model=str(copy))[1].name == method


def _as_scheme1(run: Path, model_dir: Path) -> None:
    """Rewrite the run's record the way sumtune wrote it before content fingerprints."""
    path = run / "adapter" / "sumtune.json"
    meta = json.loads(path.read_text())
    model = load_model(str(model_dir))
    meta["base_model"] = {"name": str(model_dir), "config_sha": fingerprints.config_sha(model),
                          "weights_sha": fingerprints.legacy_weights_sha(str(model_dir), model),
                          "model_type": model.config.model_type}
    path.write_text(json.dumps(meta))


def test_old_scheme_run_is_refused_until_upgraded(tiny_neo, neo_changed, tiny_gpt2, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2",), steps=1)
    _as_scheme1(run, tiny_neo)
    with pytest.raises(UserError, match="python -m sumtune.fingerprints upgrade") as e:
        load_run(run)
    _one_line(e)
    with pytest.raises(UserError, match="not on") as e:  # another architecture: still told apart
        load_run(run, base_model=str(tiny_gpt2))
    assert fingerprints.main(["upgrade", str(run), "--model", str(tiny_gpt2)]) == 2  # refused: other model
    assert fingerprints.main(["upgrade", str(run)]) == 0
    meta = json.loads((run / "adapter" / "sumtune.json").read_text())
    assert meta["base_model"]["fingerprint"] == fingerprints.FINGERPRINT_VERSION and "base_model_scheme1" in meta
    assert load_run(run)[1].name == "lora"
    with pytest.raises(UserError) as e:  # now checked by value
        load_run(run, base_model=str(neo_changed))
    _one_line(e)
    assert upgrade_run(run) == meta["base_model"]  # already current: unchanged


# --- data ------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(n: int) -> list[dict]:
    return [{"id": str(i), "article": f"Article number {i} about things.", "highlights": f"Summary {i}."}
            for i in range(n)]


def test_file_fingerprint_is_content_not_path(tmp_path):
    full = _write_csv(tmp_path / "a.csv", _rows(10))
    cut = _write_csv(tmp_path / "b.csv", _rows(9))
    (tmp_path / "elsewhere").mkdir()
    same = shutil.copy(full, tmp_path / "elsewhere" / "renamed.csv")
    fp = data_fingerprint(DataConfig(source=str(full)))
    assert fp["kind"] == "file" and len(fp["sha256"]) == 64
    assert data_fingerprint(DataConfig(source=str(cut)))["sha256"] != fp["sha256"]
    assert data_fingerprint(DataConfig(source=str(same))) == fp


def test_jsonl_cut_changes_the_fingerprint(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in _rows(5)]
    path.write_text("\n".join(lines) + "\n")
    before = data_fingerprint(DataConfig(source=str(path)))
    path.write_text("\n".join(lines[:4]) + "\n")
    assert data_fingerprint(DataConfig(source=str(path)))["sha256"] != before["sha256"]


def test_kaggle_dir_fingerprint(tmp_path):
    a = write_kaggle_dir(tmp_path / "a", sizes=(6, 3, 3))
    b = write_kaggle_dir(tmp_path / "b", sizes=(6, 3, 3))
    fa = data_fingerprint(DataConfig(source=str(a)))
    assert fa["kind"] == "kaggle_dir" and set(fa["files"]) == {"train.csv", "validation.csv", "test.csv"}
    assert data_fingerprint(DataConfig(source=str(b))) == fa
    with open(b / "test.csv", "a", encoding="utf-8") as f:
        f.write('99,"One more article.","One more summary."\n')
    fb = data_fingerprint(DataConfig(source=str(b)))
    assert fb["sha256"] != fa["sha256"]
    assert fb["files"]["train.csv"] == fa["files"]["train.csv"] and fb["files"]["test.csv"] != fa["files"]["test.csv"]


def test_file_hash_is_cached_per_path_size_mtime(tmp_path, monkeypatch):
    import hashlib

    path = _write_csv(tmp_path / "a.csv", _rows(4))
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: calls.append(name) or real(f, name))
    first = data_fingerprint(DataConfig(source=str(path)))
    assert data_fingerprint(DataConfig(source=str(path))) == first and len(calls) == 1
    _write_csv(path, _rows(3))
    assert data_fingerprint(DataConfig(source=str(path))) != first and len(calls) == 2


def test_hub_fingerprint_from_the_loaded_dataset():
    import datasets

    def dd(n):
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"article": ["a"] * n, "highlights": ["s"] * n})})

    fp = data_fingerprint(DataConfig(source="hf:someone/news:1.0"), hub=dd(3))
    assert fp["kind"] == "hf" and fp["dataset"] == "someone/news" and fp["config"] == "1.0"
    assert fp["splits"]["train"]["rows"] == 3
    assert data_fingerprint(DataConfig(source="hf:someone/news:1.0"), hub=dd(2))["sha256"] != fp["sha256"]
