"""What a user sees: every command ends with one line naming what it wrote, and no library
message a user cannot act on reaches the terminal unless `sumtune -v`.

The model's tokenizer claims 32 positions, so transformers' "Token indices sequence length is
longer ..." fires on every article (sumtune cuts the article itself). What the user would see
is gathered from three places: stdout/stderr (capfd), transformers' own log handler (it writes
to the stderr of its import time, which capfd may not hold) and Python's warnings."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import write_kaggle_dir

from sumtune.cli import main
from sumtune.quiet import TOKENIZER_LENGTH, library_output

SMALL = ["--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--max-length", "64",
         "--set", "data.max_summary_length=16", "--max-eval-samples", "2"]
DECODE = ["--max-new-tokens", "4"]
# lines a user cannot act on (the library warnings and their source-line echoes, the library bars)
NOISE = (TOKENIZER_LENGTH, "Warning", "is deprecated", "warnings.warn", "[transformers]", "Loading weights",
         "Writing model shards", "Generating train split", "Map:", "examples/s")


@pytest.fixture(scope="module")
def short_model(tiny_gpt2, tmp_path_factory) -> Path:
    """tiny_gpt2 whose tokenizer says the model takes 32 positions."""
    out = tmp_path_factory.mktemp("short") / "model"
    shutil.copytree(tiny_gpt2, out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = 32
    cfg_path.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_kaggle_dir(tmp_path_factory.mktemp("data") / "cnndm", sizes=(8, 4, 4))


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """A fresh datasets cache per test: tokenising runs (and may warn) every time."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _as_python_shows() -> None:
    """Python's own warning filters as a user's `sumtune` process has them (no pytest ini filters),
    showing each warning every time rather than once per place."""
    warnings.simplefilter("always")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)  # ignored by Python's default filters


def sumtune(capfd, argv: list[str]) -> tuple[list[str], str]:
    """`sumtune ARGV` in this process (one torch thread), exit 0: (stdout lines, everything else shown)."""
    seen = _Records()
    transformers_log = logging.getLogger("transformers")
    transformers_log.addHandler(seen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            _as_python_shows()
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
        transformers_log.removeHandler(seen)
    out, err = capfd.readouterr()
    shown = "\n".join([err, *seen.lines, *(f"{w.category.__name__}: {w.message}" for w in caught)])
    assert code == 0, shown
    return out.splitlines(), shown


def _clean(out: list[str], shown: str) -> None:
    for text in NOISE:
        assert text not in shown and not any(text in line for line in out), f"{text!r} shown:\n{shown}"


def _train(capfd, model, data, run: Path, method: str = "lora", *extra: str) -> tuple[list[str], str]:
    return sumtune(capfd, [*extra, "train", "--method", method, "--model", str(model), "--data", str(data),
                           "--output-dir", str(run), *SMALL])


@pytest.fixture(scope="module")
def runs(short_model, data, tmp_path_factory) -> dict[str, Path]:
    """A lora and a prefix_tuning run (PEFT hands prefix tuning's prefixes over as a deprecated argument)."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("lora", "prefix_tuning"):
        assert main(["train", "--method", method, "--model", str(short_model), "--data", str(data),
                     "--output-dir", str(root / method), *SMALL]) == 0
    return {m: root / m for m in ("lora", "prefix_tuning")}


@pytest.mark.parametrize("method", ["lora", "prefix_tuning"])
def test_train_names_its_weights_and_is_quiet(capfd, short_model, data, tmp_path, method):
    out, shown = _train(capfd, short_model, data, tmp_path / "run", method)
    assert out[-1].endswith(f"; weights in {tmp_path / 'run' / 'adapter'}")
    _clean(out, shown)


def test_zero_shot_names_its_results(capfd, short_model, data, tmp_path):
    out, shown = _train(capfd, short_model, data, tmp_path / "run", "zero_shot")
    assert out[-1].endswith(f"(no training); results in {tmp_path / 'run' / 'results.json'}")
    _clean(out, shown)


def test_verbose_shows_the_tokenizer_warning(capfd, short_model, data, tmp_path, monkeypatch):
    import datasets

    _, shown = _train(capfd, short_model, data, tmp_path / "quiet")  # a quiet command first, in this process
    assert TOKENIZER_LENGTH not in shown
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache2")  # tokenise again
    out, shown = _train(capfd, short_model, data, tmp_path / "loud", "lora", "-v")
    assert TOKENIZER_LENGTH in shown
    assert out[-1].endswith(f"; weights in {tmp_path / 'loud' / 'adapter'}")


@pytest.mark.parametrize("method", ["lora", "prefix_tuning"])
def test_evaluate_names_its_files_and_is_quiet(capfd, runs, method):
    out, shown = sumtune(capfd, ["evaluate", str(runs[method]), "--limit", "2", *DECODE])
    where = runs[method] / "eval" / "test"
    assert out[-1] == f"wrote {where / 'metrics.json'} and {where / 'predictions.jsonl'}"
    _clean(out, shown)


def test_summarize_prints_only_the_summaries(capfd, runs, tmp_path):
    article = tmp_path / "article.txt"
    article.write_text("Boston (CNN) -- On Monday the mayor in Boston announced a new plan to repair roads. "
                       + "Residents said they welcomed the news. " * 8)
    out, shown = sumtune(capfd, ["summarize", str(runs["lora"]), str(runs["prefix_tuning"]), str(article),
                                 *DECODE])
    assert [line for line in out if line.startswith("== ")] == [f"== {runs['lora']}", f"== {runs['prefix_tuning']}"]
    assert not any(line.startswith(("wrote", "fast path")) for line in out)
    _clean(out, shown)


def test_compare_ends_with_the_report(capfd, runs, tmp_path):
    for run in runs.values():
        sumtune(capfd, ["evaluate", str(run), "--limit", "2", *DECODE])
    out, shown = sumtune(capfd, ["compare", *map(str, runs.values()), "--output", str(tmp_path / "cmp")])
    assert f"wrote {tmp_path / 'cmp' / 'compare.md'}, {tmp_path / 'cmp' / 'compare.json'}" in out
    assert out[-1] == str(tmp_path / "cmp" / "report.html")
    _clean(out, shown)


def test_export_names_its_directory(capfd, runs, tmp_path):
    out, shown = sumtune(capfd, ["export", str(runs["lora"]), str(tmp_path / "plain")])
    assert out[-1].startswith(f"wrote {tmp_path / 'plain'}: a plain gpt2 model with the tokenizer")
    _clean(out, shown)


def test_experiment_ends_with_the_report(capfd, short_model, data, tmp_path):
    out, shown = sumtune(capfd, ["experiment", "--methods", "zero_shot,prefix_tuning", "--model", str(short_model),
                                 "--data", str(data), "--output-dir", str(tmp_path / "exp"), "--eval-limit", "2",
                                 "--decoding", "greedy", "--set", "eval.max_new_tokens=4", *SMALL])
    assert out[-1] == str(tmp_path / "exp" / "report.html")
    _clean(out, shown)


def test_serve_ends_with_its_address(capfd, runs, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # as if stopped at once
    out, shown = sumtune(capfd, ["serve", str(runs["lora"]), "--port", "8123"])
    assert out[-1] == "serving 1 run (lora) on http://127.0.0.1:8123/"
    _clean(out, shown)


def test_download_model_names_its_directory(capfd, tiny_gpt2, tmp_path, monkeypatch):
    import huggingface_hub

    def fake(repo_id, *, local_dir, **kw):
        shutil.copytree(tiny_gpt2, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    out, shown = sumtune(capfd, ["download", "model", "someone/tiny", "--out", str(tmp_path / "m")])
    assert out[-1] == f"wrote {tmp_path / 'm'}: model someone/tiny (weights, config, tokenizer); use --model {tmp_path / 'm'}"
    _clean(out, shown)


def test_download_data_names_its_files(capfd, tmp_path, monkeypatch):
    import datasets

    rows = {"id": ["1"], "article": ["An article."], "highlights": ["A summary."]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, conf=None, **k: datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows) for s in ("train", "validation", "test")}))
    out, shown = sumtune(capfd, ["download", "data", "--out", str(tmp_path / "d")])
    files = ", ".join(str(tmp_path / "d" / f"{s}.csv") for s in ("train", "validation", "test"))
    assert out[-1] == f"wrote {files}: abisee/cnn_dailymail:3.0.0 in the Kaggle layout; train with --data {tmp_path / 'd'}"
    _clean(out, shown)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_silences_only_the_named_messages_and_only_without_verbose(verbose):
    tokenizer_log = logging.getLogger("transformers.tokenization_utils_base")
    seen = _Records()
    tokenizer_log.addHandler(seen)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with library_output(verbose):
                tokenizer_log.warning(f"{TOKENIZER_LENGTH} than the specified maximum (81 > 32).")
                tokenizer_log.warning("Some other tokenizer warning")
                warnings.warn("`past_key_values` is deprecated and will be removed in version 5.40.0", FutureWarning,
                              stacklevel=1)
                warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
            tokenizer_log.warning(f"{TOKENIZER_LENGTH} after the command")  # nothing left behind
            warnings.warn("`past_key_values` is deprecated, after the command", FutureWarning, stacklevel=1)
    finally:
        tokenizer_log.removeHandler(seen)
    messages = [str(w.message) for w in caught]
    assert "Some other tokenizer warning" in seen.lines and "some other deprecation" in messages
    assert any("after the command" in m for m in seen.lines) and any("after the command" in m for m in messages)
    assert any("(81 > 32)" in m for m in seen.lines) == verbose
    assert any("5.40.0" in m for m in messages) == verbose
