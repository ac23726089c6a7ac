"""The `sumtune` command: --help everywhere, and every bad input is one line on
stderr, exit code 2, no traceback, and nothing written to the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import write_kaggle_dir

from sumtune.cli import main
from sumtune.tiny import synthetic_news


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _fails(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("sumtune")
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [[], ["train"], ["evaluate"], ["summarize"], ["compare"], ["export"], ["download"], ["download", "data"],
     ["download", "model"], ["experiment"], ["plan"], ["demo"]],
)
def test_help(capsys, argv):
    assert main([*argv, "--help"]) == 0
    assert "usage: sumtune" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--method", "adapter"], ["--method", "invalid choice", "lora"]),
        (["train", "--lr", "abc"], ["--lr", "expected a number, got 'abc'"]),
        (["train", "--epochs", "two"], ["--epochs", "expected an integer"]),
        (["train", "--batch-size", "-1"], ["--batch-size", "integer >= 0"]),
        (["train", "--precision", "fp8"], ["--precision", "invalid choice"]),
        (["train", "--epochs", "2"], ["the following arguments are required: --method"]),
        (["train", "--method", "lora", "--no-such-flag"], ["unrecognized arguments"]),
        (["frobnicate"], ["invalid choice"]),
        ([], ["required"]),
        (["train", "--method", "lora", "--set", "train.lr=abc"], ["config key 'train.lr'", "a number"]),
        (["train", "--method", "lora", "--set", "nope.x=1"], ["unknown config key 'nope.x'", "valid keys here"]),
        (["train", "--method", "lora", "--set", "method.name=adapter"], ["'method.name'", "zero_shot, prompt_tuning, prefix_tuning, p_tuning, lora"]),
        (["train", "--method", "lora", "--set", "lr"], ["--set expects key=value"]),
        (["train", "--method", "lora", "--epochs", "0"], ["'train.epochs'", ">= 1"]),
        (["train", "--method", "lora", "--config", "/nonexistent/preset.yaml"], ["config file not found"]),
    ],
)
def test_bad_flags(capsys, argv, expected):
    _fails(capsys, argv, *expected)


# --- bad data / model through `train` ----------------------------------------
# The run directory must not be created when validation fails.


@pytest.fixture
def train_argv(tiny_gpt2, tmp_path):
    pytest.importorskip("sumtune.recipes.train")
    out = tmp_path / "run"

    def argv(data: str | Path, model: str | Path = tiny_gpt2, *extra: str) -> list[str]:
        return ["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
                "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--max-length", "64",
                "--set", "data.max_summary_length=16", "--precision", "fp32", *extra]

    argv.out = out
    return argv


def _csv(path: Path, rows: list[dict], fields=("id", "article", "highlights")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


def _bad_data(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope"
    if kind == "not_dataset":
        (tmp_path / "stuff").mkdir()
        (tmp_path / "stuff" / "readme.md").write_text("hi")
        return tmp_path / "stuff"
    if kind == "empty":
        (tmp_path / "e.csv").write_text("")
        return tmp_path / "e.csv"
    if kind == "header_only":
        (tmp_path / "h.csv").write_text("id,article,highlights\n")
        return tmp_path / "h.csv"
    if kind == "columns":
        return _csv(tmp_path / "c.csv", [{"id": 1, "text": "a", "abstract": "b"}] * 5, ("id", "text", "abstract"))
    if kind == "split_empty":
        d = write_kaggle_dir(tmp_path / "k")
        rows = synthetic_news(4)
        for r in rows:
            r["article"] = ""
        _csv(d / "validation.csv", rows)
        return d
    if kind == "utf8":
        d = write_kaggle_dir(tmp_path / "k")
        (d / "train.csv").write_bytes((d / "train.csv").read_bytes().replace(b"Monday", b"Mon\xe9day", 1))
        return d
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", ["data path does not exist"]),
        ("not_dataset", ["not a dataset directory"]),
        ("empty", ["e.csv", "empty"]),
        ("header_only", ["h.csv", "header only"]),
        ("columns", ["missing column(s) article, highlights", "found id, text, abstract"]),
        ("split_empty", ["split 'validation' has no usable examples"]),
        ("utf8", ["train.csv, line 2", "not valid UTF-8"]),
    ],
)
def test_bad_data(capsys, tmp_path, train_argv, kind, expected):
    _fails(capsys, train_argv(_bad_data(tmp_path, kind)), *expected)
    assert not train_argv.out.exists()


def test_missing_model_path(capsys, tmp_path, kaggle_dir, train_argv):
    _fails(capsys, train_argv(kaggle_dir, tmp_path / "no_model"), "model path does not exist")
    assert not train_argv.out.exists()


def test_not_a_model_dir(capsys, tmp_path, kaggle_dir, train_argv):
    _fails(capsys, train_argv(kaggle_dir, kaggle_dir), "not a model directory")
    assert not train_argv.out.exists()


def test_empty_rows_are_skipped_with_one_log_line(caplog, tmp_path, train_argv):
    d = write_kaggle_dir(tmp_path / "k")
    rows = synthetic_news(24)
    rows[0]["highlights"] = ""
    rows[3]["article"] = ""
    _csv(d / "train.csv", rows)
    assert main(train_argv(d)) == 0
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        "skipped 2 examples with an empty or missing article/summary (train 2, validation 0, test 0)"]
    assert (train_argv.out / "config.yaml").is_file()


def test_pickled_model_weights_are_refused(capsys, tmp_path, kaggle_dir, train_argv, tiny_gpt2):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_gpt2, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    _fails(capsys, train_argv(kaggle_dir, model), "cannot load model", "model.safetensors")
    assert not train_argv.out.exists()


def test_train_flags_map_onto_config_keys():
    from sumtune.cli import _flags, build_parser

    a = build_parser().parse_args(["train", "--method", "full", "--save-steps", "7", "--seed", "3"])
    flags = _flags(a)
    assert flags["method.name"] == "full" and flags["train.save_steps"] == 7 and flags["train.seed"] == 3
    a = build_parser().parse_args(["experiment", "--with-full"])
    assert _flags(a)["method.name"] is None  # experiment trains every method
