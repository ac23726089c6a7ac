"""Data pipeline: sources, cleaning, bad input, tokenisation (truncation, labels, caching,
several processes), dynamic padding and the epoch order."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_kaggle_dir

from sumtune import data
from sumtune.config import DataConfig
from sumtune.data import sources, tokenize
from sumtune.errors import UserError
from sumtune.modeling import load_tokenizer
from sumtune.tiny import synthetic_news, train_tokenizer


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Each test reads and caches through its own datasets cache."""
    import datasets

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def tok(tiny_gpt2):
    return load_tokenizer(str(tiny_gpt2))


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def _ids(ds) -> list[str]:
    return list(ds["id"])


# --- cleaning ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("By . Associated Press . PUBLISHED: . 14:11 EST, 25 October 2013 . | . UPDATED: . 15:36 EST, "
         "25 October 2013 . The bishop of the Fargo Catholic Diocese has exposed church members.",
         "The bishop of the Fargo Catholic Diocese has exposed church members."),
        ("By . Sarah Griffiths . Last updated at 5:03 PM on 15th October 2011 . A woman was found.",
         "A woman was found."),
        ("By . Jill Reilly . and . Sam Webb . A woman was found.", "A woman was found."),
        # a short first paragraph after the byline is content, not byline
        ("By . Rob Cooper . Tragic: A woman died . She was 45 .", "Tragic: A woman died . She was 45 ."),
        ("By . Emily Allen . Scroll down for video . A woman was found . Police said.",
         "A woman was found . Police said."),
        ("WASHINGTON (CNN) -- The President said.", "WASHINGTON -- The President said."),
        ("LONDON, England (CNN) -- The Prime Minister said.", "LONDON, England -- The Prime Minister said."),
        ("(CNN)The President said.", "The President said."),
        ("  Several   spaces\nand a\tnewline.  ", "Several spaces and a newline."),
        # "(CNN)" inside a sentence and a non-CNN dateline stay as they are
        ("The man, who said (CNN) was wrong, left.", "The man, who said (CNN) was wrong, left."),
        ("PARIS (Reuters) -- The Minister said.", "PARIS (Reuters) -- The Minister said."),
    ],
)
def test_clean_article(raw, clean):
    assert data.clean_article(raw) == clean


def test_clean_summary_keeps_one_highlight_per_line():
    raw = "  First  highlight .\n\nSecond one, with CAPS!\n  Third?  "
    assert data.clean_summary(raw) == "First highlight .\nSecond one, with CAPS!\nThird?"


# --- sources ----------------------------------------------------------------


def test_kaggle_dir(kaggle_dir):
    splits = data.load_splits(DataConfig(source=str(kaggle_dir)), seed=0)
    assert {s: len(d) for s, d in splits.items()} == {"train": 24, "validation": 8, "test": 8}
    assert splits["train"].column_names == ["id", "article", "summary"]
    first = splits["train"][0]
    assert first["id"] == "0000"  # ids are read as text: leading zeros kept
    assert "\n" in first["summary"]  # highlights stay one per line
    assert "(CNN)" not in first["article"] and first["article"][0].isupper()


def test_single_csv_split_by_ratio_with_seed(tmp_path):
    rows = synthetic_news(50, seed=3)
    path = _write_csv(tmp_path / "news.csv", [{"text": r["article"], "summ": r["highlights"]} for r in rows],
                      ["text", "summ"])
    cfg = DataConfig(source=str(path), article_column="text", summary_column="summ", val_ratio=0.2, test_ratio=0.1)
    a = data.load_splits(cfg, seed=1)
    assert {s: len(d) for s, d in a.items()} == {"train": 35, "validation": 10, "test": 5}
    all_ids = [i for s in a.values() for i in _ids(s)]
    assert sorted(all_ids, key=int) == [str(i) for i in range(50)]  # row numbers as ids, disjoint splits
    assert {s: _ids(d) for s, d in data.load_splits(cfg, seed=1).items()} == {s: _ids(d) for s, d in a.items()}
    assert _ids(data.load_splits(cfg, seed=2)["test"]) != _ids(a["test"])
    # the article/summary of a row is the one in the file
    row = a["validation"][0]
    assert row["article"] == data.clean_article(rows[int(row["id"])]["article"])


def test_jsonl_custom_columns(tmp_path):
    path = tmp_path / "news.jsonl"
    rows = synthetic_news(20, seed=4)
    path.write_text("".join(json.dumps({"key": f"k{i}", "body": r["article"], "abstract": r["highlights"]}) + "\n"
                            for i, r in enumerate(rows)), encoding="utf-8")
    cfg = DataConfig(source=str(path), article_column="body", summary_column="abstract", id_column="key")
    splits = data.load_splits(cfg, seed=0)
    assert sum(len(d) for d in splits.values()) == 20
    assert all(i.startswith("k") for d in splits.values() for i in _ids(d))


def test_hf_source(tmp_path):
    # hf:NAME goes through datasets.load_dataset; a local dataset directory is a valid NAME offline.
    root = write_kaggle_dir(tmp_path / "hub_ds", sizes=(12, 4, 4))
    splits = data.load_splits(DataConfig(source=f"hf:{root}"), seed=0)
    assert {s: len(d) for s, d in splits.items()} == {"train": 12, "validation": 4, "test": 4}
    (root / "validation.csv").unlink()
    (root / "test.csv").unlink()
    splits = data.load_splits(DataConfig(source=f"hf:{root}", val_ratio=0.25, test_ratio=0.25), seed=0)
    assert {s: len(d) for s, d in splits.items()} == {"train": 6, "validation": 3, "test": 3}


def test_max_samples_are_seeded_subsets(tmp_path):
    src = write_kaggle_dir(tmp_path / "k", sizes=(40, 20, 20))
    base = DataConfig(source=str(src), max_train_samples=10, max_eval_samples=6)
    a = data.load_splits(base, seed=5)
    assert {s: len(d) for s, d in a.items()} == {"train": 10, "validation": 6, "test": 6}
    assert _ids(data.load_splits(base, seed=5)["train"]) == _ids(a["train"])
    assert _ids(data.load_splits(base, seed=6)["train"]) != _ids(a["train"])
    more = data.load_splits(DataConfig(source=str(src), max_train_samples=15), seed=5)
    assert set(_ids(a["train"])) < set(_ids(more["train"]))  # a larger subset contains the smaller
    test_only = data.load_splits(DataConfig(source=str(src), max_eval_samples=6, max_test_samples=3), seed=5)
    assert (len(test_only["validation"]), len(test_only["test"])) == (6, 3)


# --- bad input --------------------------------------------------------------


def _fails(cfg: DataConfig, *expected: str) -> str:
    with pytest.raises(UserError) as e:
        data.load_splits(cfg, seed=0)
    msg = str(e.value)
    assert "\n" not in msg
    for text in expected:
        assert text in msg
    return msg


def test_missing_path(tmp_path):
    _fails(DataConfig(source=str(tmp_path / "nope")), "does not exist", "nope")


def test_not_a_dataset(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    _fails(DataConfig(source=str(tmp_path / "model")), "not a dataset directory", "train.csv")
    (tmp_path / "notes.txt").write_text("hello")
    _fails(DataConfig(source=str(tmp_path / "notes.txt")), "not a dataset", ".csv")
    _fails(DataConfig(source=""), "no data source")


def test_kaggle_dir_missing_one_file(kaggle_dir):
    (kaggle_dir / "test.csv").unlink()
    _fails(DataConfig(source=str(kaggle_dir)), "missing test.csv")


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_text("")
    _fails(DataConfig(source=str(tmp_path / name)), name, "empty")


def test_header_only_csv(tmp_path, kaggle_dir):
    (tmp_path / "h.csv").write_text("id,article,highlights\n\n")
    _fails(DataConfig(source=str(tmp_path / "h.csv")), "h.csv", "header only")
    (kaggle_dir / "validation.csv").write_text("id,article,highlights\n")
    _fails(DataConfig(source=str(kaggle_dir)), "validation.csv", "header only")


def test_missing_columns_names_the_columns_found(tmp_path):
    path = _write_csv(tmp_path / "x.csv", [{"id": 1, "text": "a", "highlights": "b"}], ["id", "text", "highlights"])
    _fails(DataConfig(source=str(path)), "missing column(s) article", "found id, text, highlights",
           "data.article_column")


def test_empty_rows_skipped_and_counted_in_one_line(kaggle_dir, caplog):
    rows = synthetic_news(10, seed=9)
    rows[2]["article"] = ""
    rows[5]["highlights"] = "   "
    rows[7]["article"] = "\n \t"
    _write_csv(kaggle_dir / "train.csv", rows, ["id", "article", "highlights"])
    with caplog.at_level(logging.WARNING, logger="sumtune.data"):
        splits = data.load_splits(DataConfig(source=str(kaggle_dir)), seed=0)
    assert len(splits["train"]) == 7 and "0002" not in _ids(splits["train"])
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["skipped 3 examples with an empty or missing article/summary (train 3, validation 0, test 0)"]


def test_split_empty_after_skipping(kaggle_dir):
    rows = synthetic_news(3, seed=9)
    for r in rows:
        r["highlights"] = ""
    _write_csv(kaggle_dir / "test.csv", rows, ["id", "article", "highlights"])
    _fails(DataConfig(source=str(kaggle_dir)), "split 'test' has no usable examples", "3 skipped")


def test_non_utf8_csv_names_file_and_line(kaggle_dir):
    body = (kaggle_dir / "validation.csv").read_bytes().split(b"\n")
    body[3] = body[3].replace(b"the", "th\xe9".encode("latin-1"), 1)
    (kaggle_dir / "validation.csv").write_bytes(b"\n".join(body))
    msg = _fails(DataConfig(source=str(kaggle_dir)), "validation.csv, line 4", "not valid UTF-8")
    assert "iconv" in msg


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    lines = [json.dumps({"article": f"Article {i}.", "summary": "S."}).encode() for i in range(10)]
    lines[6] = b'{"article": "caf\xe9", "summary": "S."}'
    (tmp_path / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    _fails(DataConfig(source=str(tmp_path / "x.jsonl"), summary_column="summary"), "x.jsonl, line 7", "UTF-8")


def test_too_few_rows_to_split(tmp_path):
    path = _write_csv(tmp_path / "x.csv", [{"article": "a", "highlights": "b"}] * 2, ["article", "highlights"])
    _fails(DataConfig(source=str(path)), "only 2 examples")


def test_find_bad_utf8_across_chunk_boundary(tmp_path):
    # a multi-byte character cut by the read chunk is fine; a bad byte is found with its line
    good = ("é" * 10).encode()
    (tmp_path / "ok").write_bytes(b"a\n" + good)
    assert sources._find_bad_utf8(tmp_path / "ok") is None
    (tmp_path / "bad").write_bytes(b"a\nb\n" + good + b"\xff")
    assert sources._find_bad_utf8(tmp_path / "bad") == 3


# --- tokenisation -----------------------------------------------------------


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_example(tok, article: str, summary: str, cfg: DataConfig) -> dict:
    """One token example (see `data.encode_batch`), with n_target: the number of target tokens."""
    ex = {k: v[0] for k, v in data.encode_batch(tok, [article], [summary], cfg).items()}
    return {**ex, "n_target": sum(label != -100 for label in ex["labels"])}


def test_article_is_cut_not_summary(tok):
    cfg = DataConfig(max_length=64, max_summary_length=32)
    article = " ".join(r["article"] for r in synthetic_news(20, seed=2))
    summary = "The mayor announced a plan .\nResidents welcomed it."
    ex = encode_example(tok, article, summary, cfg)
    sep, target = _enc(tok, cfg.separator), _enc(tok, summary) + [tok.eos_token_id]
    n_art = 64 - len(sep) - len(target)
    assert len(_enc(tok, article)) > 200 and len(ex["input_ids"]) == 64
    assert ex["input_ids"] == _enc(tok, article)[:n_art] + sep + target
    assert ex["labels"] == [-100] * (n_art + len(sep)) + target
    assert ex["n_target"] == len(target)
    # generation input: the same article start and separator, room left for the longest summary
    prompt = data.encode_prompt(tok, article, cfg)
    assert prompt == _enc(tok, article)[: 64 - len(sep) - 33] + sep


def test_summary_cut_only_beyond_its_budget(tok):
    cfg = DataConfig(max_length=256, max_summary_length=16)
    article, summary = "A short article.", " ".join(["The council approved the budget ."] * 10)
    ex = encode_example(tok, article, summary, cfg)
    assert ex["input_ids"][: len(_enc(tok, article))] == _enc(tok, article)  # article whole
    assert ex["n_target"] == 17 and ex["input_ids"][-17:] == _enc(tok, summary)[:16] + [tok.eos_token_id]
    short = encode_example(tok, article, "Budget approved.", cfg)
    assert short["input_ids"][-short["n_target"]:] == _enc(tok, "Budget approved.") + [tok.eos_token_id]


def test_separator_too_long_for_max_length(tok):
    cfg = DataConfig(max_length=24, max_summary_length=16, separator=" and then the summary follows here:")
    with pytest.raises(UserError, match="data.max_length"):
        encode_example(tok, "a", "b", cfg)


def test_tokenize_splits_columns(kaggle_dir, tok):
    cfg = DataConfig(source=str(kaggle_dir), max_length=96, max_summary_length=32)
    splits = data.load_splits(cfg, seed=0)
    toks = data.tokenize_splits(splits, tok, cfg)
    row, raw = toks["train"][3], splits["train"][3]
    assert row["input_ids"] == encode_example(tok, raw["article"], raw["summary"], cfg)["input_ids"]
    assert all(len(r) <= 96 for r in toks["validation"]["input_ids"])
    assert toks["test"].column_names == ["id", "article", "summary", "input_ids", "labels"]


def _count_calls(monkeypatch, module, name: str, rows_arg: int | None = None) -> list[int]:
    """Count the calls of module.<name> (or the rows it is given, from positional argument rows_arg)."""
    calls = [0]
    real = getattr(module, name)

    def counting(*a, **k):
        calls[0] += 1 if rows_arg is None else len(a[rows_arg])
        return real(*a, **k)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_rerun_reads_the_cache(kaggle_dir, tiny_gpt2, monkeypatch):
    cfg = DataConfig(source=str(kaggle_dir), max_length=96, max_summary_length=32)
    first = data.tokenize_splits(data.load_splits(cfg, seed=0), load_tokenizer(str(tiny_gpt2)), cfg)
    cleaned, encoded = (_count_calls(monkeypatch, sources, "clean_article"),
                        _count_calls(monkeypatch, tokenize, "encode_batch", 1))
    # a fresh tokenizer object from disk, as in a new run
    again = data.tokenize_splits(data.load_splits(cfg, seed=0), load_tokenizer(str(tiny_gpt2)), cfg)
    assert cleaned[0] == 0 and encoded[0] == 0
    assert again["train"].cache_files == first["train"].cache_files
    assert again["train"]["input_ids"] == first["train"]["input_ids"]
    # a setting that changes the examples invalidates the cache
    cfg2 = DataConfig(source=str(kaggle_dir), max_length=80, max_summary_length=32)
    data.tokenize_splits(data.load_splits(cfg2, seed=0), load_tokenizer(str(tiny_gpt2)), cfg2)
    assert encoded[0] == 40 and cleaned[0] == 0


def test_cache_fingerprints_are_stable_across_processes(kaggle_dir, tiny_gpt2, hf_cache):
    cfg = DataConfig(source=str(kaggle_dir), max_length=96, max_summary_length=32)
    here = data.tokenize_splits(data.load_splits(cfg, seed=0), load_tokenizer(str(tiny_gpt2)), cfg)
    code = (
        "import sys, datasets; datasets.config.HF_DATASETS_CACHE = __import__('pathlib').Path(sys.argv[3]);"
        "from sumtune import data; from sumtune.config import DataConfig; from sumtune.modeling import load_tokenizer;"
        "cfg = DataConfig(source=sys.argv[1], max_length=96, max_summary_length=32);"
        "t = data.tokenize_splits(data.load_splits(cfg, 0), load_tokenizer(sys.argv[2]), cfg);"
        "print(t['train'].cache_files[0]['filename'])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(kaggle_dir), str(tiny_gpt2), str(hf_cache)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    assert out.stdout.strip() == here["train"].cache_files[0]["filename"]


def test_tokenizer_id_tells_tokenizers_apart(tok, tiny_gpt2):
    other = train_tokenizer(["completely different words here " * 20, "zebra quartz " * 30], vocab_size=len(tok))
    assert data.tokenizer_id(tok) == data.tokenizer_id(load_tokenizer(str(tiny_gpt2)))
    assert data.tokenizer_id(tok) != data.tokenizer_id(other)


def test_several_processes_give_the_same_examples(kaggle_dir, tok, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(sources, "MIN_PARALLEL_ROWS", 1)
    one = DataConfig(source=str(kaggle_dir), max_length=96, max_summary_length=32, num_proc=1)
    two = DataConfig(source=str(kaggle_dir), max_length=96, max_summary_length=32, num_proc=2)
    a = data.tokenize_splits(data.load_splits(one, seed=0), tok, one)
    # the same examples have the same fingerprint: a fresh cache, or the 2-process run would just load `a`
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache2")
    b = data.tokenize_splits(data.load_splits(two, seed=0), tok, two)
    assert any("_of_00002" in f["filename"] for f in b["train"].cache_files)  # really two workers
    for split in data.SPLITS:
        assert b[split]["id"] == a[split]["id"]
        assert b[split]["input_ids"] == a[split]["input_ids"]
        assert b[split]["labels"] == a[split]["labels"]


# --- batching ---------------------------------------------------------------


def test_collator_pads_to_the_longest_in_the_batch(tok):
    cfg = DataConfig(max_length=512, max_summary_length=32)
    rows = [encode_example(tok, r["article"], r["highlights"], cfg) for r in synthetic_news(3, seed=1)]
    batch = data.Collator(tok.pad_token_id)(rows)
    n = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (3, n) and n < 512
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        assert batch["input_ids"][i, :k].tolist() == r["input_ids"]
        assert batch["labels"][i, :k].tolist() == r["labels"]
        assert (batch["labels"][i, k:] == -100).all() and (batch["input_ids"][i, k:] == tok.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * k + [0] * (n - k)


def test_padded_batch_loss_equals_unpadded_examples(tok, tiny_gpt2):
    """Reference: the loss of each example alone, no padding; the padded batch must match it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)).eval()
    cfg = DataConfig(max_length=256, max_summary_length=32)
    rows = [encode_example(tok, r["article"], r["highlights"], cfg) for r in synthetic_news(4, seed=7)]
    assert len({len(r["input_ids"]) for r in rows}) > 1
    batch = data.Collator(tok.pad_token_id)(rows)
    with torch.no_grad():
        padded = model(**batch).loss
        total = count = 0.0
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]])
            n = (labels[0, 1:] != -100).sum().item()
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    assert padded.item() == pytest.approx(total / count, rel=1e-5)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert DataConfig().group_by_length is False
    a = data.epoch_order(100, seed=1, epoch=0)
    assert sorted(a) == list(range(100))
    assert a == data.epoch_order(100, seed=1, epoch=0)
    assert a != data.epoch_order(100, seed=1, epoch=1) and a != data.epoch_order(100, seed=2, epoch=0)


def test_length_grouped_order():
    lengths = [(i * 37) % 101 for i in range(300)]
    order = data.epoch_order(300, seed=0, epoch=0, lengths=lengths, group_by_length=True, batch_size=2)
    assert sorted(order) == list(range(300))
    for start in range(0, 300, 100):  # mega-batches of 50 batches of 2, longest first
        chunk = [lengths[i] for i in order[start : start + 100]]
        assert chunk == sorted(chunk, reverse=True)
    assert set(order[:100]) == set(data.epoch_order(300, seed=0, epoch=0)[:100])
