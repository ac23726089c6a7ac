"""Data: sources -> cleaned rows (id, article, summary) -> token examples -> batches.

Sources (``DataConfig.source``):
- a Kaggle CNN/DailyMail directory with ``train.csv``, ``validation.csv``, ``test.csv``;
- one ``.csv`` / ``.jsonl`` / ``.json`` file, split by ratio with the seed;
- ``hf:NAME[:CONFIG]`` through ``datasets`` (e.g. ``hf:abisee/cnn_dailymail:3.0.0``).

Files are read by ``datasets`` into memory-mapped Arrow tables (cached on disk), so
a 1.3 GB CSV is not held in RAM; cleaning and tokenisation are ``map`` calls with
explicit fingerprints, so a re-run reuses the cache instead of re-tokenising.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sumtune.config import DataConfig
from sumtune.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_KAGGLE_FILES = {s: f"{s}.csv" for s in SPLITS}

# --- cleaning ---------------------------------------------------------------

# Daily Mail bylines/timestamps at the start of an article:
#   "By . Associated Press . PUBLISHED: . 14:03 EST, 3 May 2013 . | . UPDATED: . 14:04 EST, 3 May 2013 . "
_DM_HEADER = re.compile(
    r"^\s*(?:By \. [^.]{1,80}? \. )?(?:(?:and|and \.) [^.]{1,80}? \. )*"
    r"(?:(?:PUBLISHED|UPDATED): \. \d{1,2}:\d{2} EST, \d{1,2} \w+ \d{4} \. (?:\| \. )?)+"
)
_DM_BYLINE = re.compile(r"^\s*By \. [^.]{1,80}? \. (?:(?:and \. )?[^.]{1,60}? \. ){0,2}(?=[A-Z\"'(])")
_LAST_UPDATED = re.compile(r"^\s*Last updated at \d{1,2}:\d{2} [AP]M on \d{1,2}\w{0,2} \w+ \d{4} \. ")
_CNN_TAG = re.compile(r"^(.{0,80}?)\(CNN\)\s*(?:--\s*)?")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


def clean_article(text: str) -> str:
    """Collapse whitespace and strip CNN/DM boilerplate that is safe to remove (Daily Mail
    bylines and PUBLISHED/UPDATED stamps, "Last updated at ...", the "(CNN) --" tag);
    case and punctuation are kept."""
    text = _SPACES.sub(" ", text.replace("\n", " ")).strip()
    for pattern in (_DM_HEADER, _LAST_UPDATED):
        text = pattern.sub("", text, count=1)
    if _DM_BYLINE.match(text):
        text = _DM_BYLINE.sub("", text, count=1)
    text = _CNN_TAG.sub(lambda m: f"{m.group(1).strip()} -- " if m.group(1).strip() else "", text, count=1)
    return text.strip()


def clean_summary(text: str) -> str:
    """One highlight sentence per line (ROUGE-Lsum splits on newlines), whitespace collapsed."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# --- sources ----------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _find_bad_utf8(path: Path) -> int | None:
    """1-based line number of the first non-UTF-8 byte sequence, or None."""
    line = 1
    with open(path, "rb") as f:
        tail = b""
        while chunk := f.read(1 << 24):
            buf = tail + chunk
            try:
                buf.decode("utf-8")
                tail = b""
            except UnicodeDecodeError as e:
                if e.end < len(buf) or e.reason != "unexpected end of data":
                    return line + buf[: e.start].count(b"\n")
                tail = buf[e.start :]
                buf = buf[: e.start]
            line += buf.count(b"\n")
    return line if tail else None


def _load_files(kind: str, files: dict[str, str]):
    import datasets

    for f in files.values():
        p = Path(f)
        if p.stat().st_size == 0:
            raise UserError(f"{p}: file is empty; it needs a header row and examples")
    try:
        return datasets.load_dataset(kind, data_files=files)
    except Exception as e:  # noqa: BLE001 - turned into one line naming the file
        text = f"{type(e).__name__}: {e} {e.__cause__ or ''} {e.__context__ or ''}"
        if "utf-8" in text.lower() or "codec" in text.lower() or "unicode" in text.lower():
            for f in files.values():
                bad = _find_bad_utf8(Path(f))
                if bad is not None:
                    raise UserError(
                        f"{f}, line {bad}: not valid UTF-8; re-encode the file as UTF-8 "
                        f"(e.g. iconv -f latin1 -t utf-8 {Path(f).name} > fixed.{kind})"
                    ) from None
        if "empty" in text.lower() or "no columns" in text.lower():
            raise UserError(f"{', '.join(files.values())}: no data (empty file or header only)") from None
        raise UserError(f"cannot read {', '.join(files.values())} as {kind}: {_first_line(e)}") from None


def _read_source(cfg: DataConfig, seed: int):
    """Raw DatasetDict with train/validation/test, original column names."""
    import datasets

    src = cfg.source.strip()
    if not src:
        raise UserError("no data source; pass --data DIR|FILE.csv|FILE.jsonl|hf:NAME[:CONFIG] (or `sumtune demo`)")
    if src.startswith("hf:"):
        name, _, conf = src[3:].partition(":")
        try:
            raw = datasets.load_dataset(name, conf or None)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"cannot load dataset '{name}' from the Hugging Face Hub ({_first_line(e)[:160]}); offline, run "
                "`sumtune download data` where you have internet and pass the directory with --data DIR"
            ) from None
        return _ensure_splits(datasets.DatasetDict(raw), cfg, seed)
    path = Path(src).expanduser()
    if not path.exists():
        raise UserError(f"data path does not exist: {src}; pass a Kaggle CNN/DM directory, a .csv/.jsonl file or hf:NAME")
    if path.is_dir():
        missing = [f for f in _KAGGLE_FILES.values() if not (path / f).is_file()]
        if len(missing) == len(_KAGGLE_FILES):
            raise UserError(f"{src} is not a dataset directory: expected train.csv, validation.csv and test.csv (Kaggle CNN/DM layout)")
        if missing:
            raise UserError(f"{src}: missing {', '.join(missing)}; a Kaggle CNN/DM directory has train.csv, validation.csv, test.csv")
        return _load_files("csv", {s: str(path / f) for s, f in _KAGGLE_FILES.items()})
    kind = {".csv": "csv", ".jsonl": "json", ".json": "json"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{src} is not a dataset: use a .csv or .jsonl file, a Kaggle CNN/DM directory or hf:NAME")
    raw = _load_files(kind, {"train": str(path)})
    return _ensure_splits(raw, cfg, seed)


def _ensure_splits(raw, cfg: DataConfig, seed: int):
    """Split a single table by ratio (seeded) when validation/test are absent."""
    import datasets

    if all(s in raw for s in SPLITS):
        return raw
    if "train" not in raw:
        raise UserError(f"data source {cfg.source} has splits {list(raw)}; need 'train' (and optionally validation/test)")
    full = raw["train"]
    if len(full) < 3:
        raise UserError(f"{cfg.source}: only {len(full)} rows; need at least 3 to split train/validation/test")
    holdout = cfg.val_ratio + cfg.test_ratio
    a = full.train_test_split(test_size=holdout, seed=seed)
    b = a["test"].train_test_split(test_size=cfg.test_ratio / holdout, seed=seed)
    return datasets.DatasetDict(
        train=a["train"], validation=raw.get("validation", b["train"]), test=raw.get("test", b["test"])
    )


def _subset(ds, n: int, seed: int):
    return ds.shuffle(seed=seed).select(range(n)) if 0 < n < len(ds) else ds


def _standardise(ds, split: str, cfg: DataConfig):
    """Rename to id/article/summary, clean, and drop rows with an empty article or summary."""
    cols = ds.column_names
    missing = [c for c in (cfg.article_column, cfg.summary_column) if c not in cols]
    if missing:
        raise UserError(
            f"{cfg.source} ({split}): missing column(s) {', '.join(missing)}; found {', '.join(cols) or 'none'}; "
            "set data.article_column / data.summary_column (--set data.article_column=NAME)"
        )
    has_id = cfg.id_column in cols
    do_clean = cfg.clean
    art_c, sum_c, id_c = cfg.article_column, cfg.summary_column, cfg.id_column

    def fn(batch: dict[str, list], idx: list[int]) -> dict[str, list]:
        arts, sums = batch[art_c], batch[sum_c]
        ids = batch[id_c] if has_id else idx
        out = {"id": [], "article": [], "summary": []}
        for i, a, s in zip(ids, arts, sums):
            a = a if isinstance(a, str) else ""
            s = s if isinstance(s, str) else ""
            a, s = (clean_article(a), clean_summary(s)) if do_clean else (a.strip(), s.strip())
            out["id"].append(str(i))
            out["article"].append(a)
            out["summary"].append(s)
        return out

    fp = _hash(ds._fingerprint, "standardise-v1", art_c, sum_c, id_c, has_id, do_clean)
    ds = ds.map(fn, batched=True, with_indices=True, remove_columns=cols, new_fingerprint=fp,
                num_proc=_procs(cfg, len(ds)), desc=f"cleaning {split}")
    n0 = len(ds)
    ds = ds.filter(lambda a, s: [bool(x) and bool(y) for x, y in zip(a, s)], input_columns=["article", "summary"],
                   batched=True, new_fingerprint=_hash(fp, "nonempty"))
    if len(ds) < n0:
        log.warning("%s: skipped %d of %d rows with an empty or missing article/summary", split, n0 - len(ds), n0)
    if len(ds) == 0:
        raise UserError(f"{cfg.source}: split '{split}' has no usable rows (every article or summary is empty)")
    return ds


def load_splits(cfg: DataConfig, seed: int):
    """Cleaned train/validation/test with columns id, article, summary; subsets are seeded."""
    import datasets

    raw = _read_source(cfg, seed)
    out = {}
    for split in SPLITS:
        n = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
        ds = raw[split]
        if len(ds) == 0:
            raise UserError(f"{cfg.source}: split '{split}' is empty (header only?)")
        out[split] = _standardise(_subset(ds, n, seed), split, cfg)
    return datasets.DatasetDict(out)


# --- tokenisation -----------------------------------------------------------


def _hash(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _procs(cfg: DataConfig, n: int) -> int | None:
    return cfg.num_proc if cfg.num_proc > 1 and n >= 2000 else None


def tokenizer_id(tokenizer) -> str:
    """A stable identity for cache fingerprints: vocabulary + special tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    return _hash(type(tokenizer).__name__, vocab[:50], len(vocab), tokenizer.eos_token, tokenizer.pad_token)


def _budget(tokenizer, cfg: DataConfig) -> tuple[list[int], int]:
    sep = tokenizer(cfg.separator, add_special_tokens=False)["input_ids"]
    return sep, cfg.max_length - len(sep)


def encode_example(tokenizer, article: str, summary: str, cfg: DataConfig) -> dict[str, Any]:
    """prompt = article (cut to fit) + separator; target = summary (cut only beyond its own budget) + EOS."""
    sep, room = _budget(tokenizer, cfg)
    target = tokenizer(summary, add_special_tokens=False)["input_ids"][: cfg.max_summary_length]
    target = target + [tokenizer.eos_token_id]
    art = tokenizer(article, add_special_tokens=False)["input_ids"][: max(room - len(target), 1)]
    prompt = art + sep
    return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target, "n_target": len(target)}


def encode_prompt(tokenizer, article: str, cfg: DataConfig) -> list[int]:
    """The generation input: the article cut to leave room for the longest summary, + separator."""
    sep, room = _budget(tokenizer, cfg)
    art = tokenizer(article, add_special_tokens=False)["input_ids"][: max(room - cfg.max_summary_length - 1, 1)]
    return art + sep


def tokenize_splits(splits, tokenizer, cfg: DataConfig):
    """Add input_ids, labels (-100 on the prompt) and n_target to every split (cached by fingerprint)."""
    import datasets

    sig = _hash(tokenizer_id(tokenizer), cfg.max_length, cfg.max_summary_length, cfg.separator, "tok-v1")

    def fn(batch: dict[str, list]) -> dict[str, list]:
        rows = [encode_example(tokenizer, a, s, cfg) for a, s in zip(batch["article"], batch["summary"])]
        return {k: [r[k] for r in rows] for k in ("input_ids", "labels", "n_target")}

    return datasets.DatasetDict({
        split: ds.map(fn, batched=True, new_fingerprint=_hash(ds._fingerprint, sig),
                      num_proc=_procs(cfg, len(ds)), desc=f"tokenising {split}")
        for split, ds in splits.items()
    })


def describe(cfg: DataConfig) -> dict[str, Any]:
    """The data settings that define a run's examples (resume checks these)."""
    return asdict(cfg)


# --- batching ---------------------------------------------------------------


class Collator:
    """Right-pads a list of token examples to the longest in the batch (never to max_length)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(
    n: int, seed: int, epoch: int, lengths: list[int] | None = None, group_by_length: bool = False,
    batch_size: int = 1,
) -> list[int]:
    """The sample order of one epoch: a permutation that depends only on (seed, epoch).

    With ``group_by_length``, the permutation is cut into mega-batches of 50 batches,
    each sorted by length (longest first), so batches pad less; the order then also
    depends on the batch size.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if not group_by_length:
        return order
    if lengths is None:
        raise ValueError("group_by_length needs lengths")
    mega = max(batch_size * 50, 1)
    out: list[int] = []
    for i in range(0, n, mega):
        out.extend(sorted(order[i : i + mega], key=lambda j: -lengths[j]))
    return out
