"""Reading data sources into cleaned train/validation/test rows (id, article, summary).

Sources (``DataConfig.source``):
- a directory with ``train.csv``, ``validation.csv``, ``test.csv`` (the Kaggle CNN/DailyMail
  layout); reading one split (``only``, as `evaluate` does) needs only that split's file;
- one ``.csv`` / ``.jsonl`` / ``.json`` file, split by ratio with the seed; or, with
  ``whole_file`` (a file given to `evaluate` to score), all its rows as the one split read;
- ``hf:NAME[:CONFIG]`` through ``datasets`` (e.g. ``hf:abisee/cnn_dailymail:3.0.0``).

Files are read (``readers``) into memory-mapped Arrow tables (cached on disk), so
a 1.3 GB CSV is not held in RAM; splitting, subsetting and cleaning carry explicit
fingerprints (``cache_key``), so a re-run reuses the cache instead of cleaning again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sumtune.config import DataConfig
from sumtune.data.clean import clean_article, clean_summary
from sumtune.data.readers import (
    BOM,
    cache_key,
    csv_diagnose,
    csv_header,
    datasets_quiet,
    first_line,
    has_content,
    load_jsonl,
    utf8_error,
)
from sumtune.errors import UserError
from sumtune.offline import use_cache_only

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
KAGGLE_FILES = {s: f"{s}.csv" for s in SPLITS}
FILE_KINDS = {".csv": "csv", ".jsonl": "json", ".json": "json"}  # a single-file source, by suffix
# Below this many rows, starting worker processes costs more than it saves.
MIN_PARALLEL_ROWS = 2000


def num_workers(cfg: DataConfig, n: int) -> int | None:
    """Worker processes for a ``map`` over n rows (None: this process)."""
    return cfg.num_proc if cfg.num_proc > 1 and n >= MIN_PARALLEL_ROWS else None


def _load_file(path: Path, kind: str, cfg: DataConfig):
    """One CSV/JSON(L) file as a memory-mapped Dataset; every failure is one line naming the file."""
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    if kind == "json":
        if not has_content(path):
            raise UserError(f"{path}: file is empty; it needs one JSON object per line")
        with open(path, "rb") as f:
            is_array = f.read(64).lstrip(BOM + b" \t\r\n").startswith(b"[")
        if not is_array:  # JSON Lines: our reader, which knows the line of a fault
            return load_jsonl(path, cfg.article_column, cfg.summary_column, cfg.id_column)
        # a JSON array (.json): pyarrow's reader does not check UTF-8; bad bytes would only fail later
        if (err := utf8_error(path)) is not None:
            raise err
        kwargs: dict[str, Any] = {}
    else:
        # Every column as text: ids keep leading zeros, a chunk of empty cells cannot change a column's type.
        cols = csv_header(path)
        kwargs = {"column_names": cols, "header": 0,
                  "features": datasets.Features({c: datasets.Value("string") for c in cols})}
    try:
        with datasets_quiet():
            return datasets.load_dataset(kind, data_files={"train": str(path)}, split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - turned into one line naming the file
        chain = f"{e!r} {e.__cause__!r} {e.__context__!r}".lower()
        if "utf-8" in chain or "unicode" in chain:
            err = utf8_error(path)
            if err is not None:
                raise err from None
        if "corresponds to no data" in chain or "no columns" in chain:
            raise UserError(f"{path}: no examples in the file") from None
        cause = e.__cause__ or e
        if kind == "csv" and (err := csv_diagnose(path, len(cols), str(cause))) is not None:
            raise err from None
        raise UserError(f"cannot read {path} as {kind}: {first_line(cause)}") from None


def _check_columns(ds, where: str, cfg: DataConfig) -> None:
    cols = ds.column_names
    missing = [c for c in (cfg.article_column, cfg.summary_column) if c not in cols]
    if missing:
        raise UserError(
            f"{where}: missing column(s) {', '.join(missing)}; found {', '.join(cols) or 'none'}; "
            "name yours with --set data.article_column=NAME --set data.summary_column=NAME"
        )
    if len(ds) == 0:
        raise UserError(f"{where}: no examples")


def _with_ids(ds, cfg: DataConfig):
    """Give rows without an id column their row number (before any split or subset)."""
    if cfg.id_column in ds.column_names:
        return ds
    ids = [str(i) for i in range(len(ds))]
    return ds.add_column(cfg.id_column, ids, new_fingerprint=cache_key(ds._fingerprint, "row-ids", cfg.id_column))


def directory_kind(cfg: DataConfig) -> str:
    """What a data directory is called under the configured preset, for messages."""
    return {"none": "a dataset directory (the Kaggle CNN/DM layout)",
            "cnndm": "a cnndm directory (the Kaggle CNN/DM layout)",
            "xsum": "an xsum directory"}.get(cfg.preset, f"a {cfg.preset} directory")


def check_source(cfg: DataConfig, only: str | None = None) -> None:
    """The one-line error of a local source that does not exist, is no dataset, or (a directory)
    lacks a split's file (with `only`: that split's file only), before anything is read; each
    names the preset in use (`directory_kind`). Hub sources are checked when loaded."""
    src = cfg.source.strip()
    if not src:
        raise UserError("no data source; pass --data DIR|FILE.csv|FILE.jsonl|hf:NAME[:CONFIG]")
    if src.startswith("hf:"):
        return
    path = Path(src).expanduser()
    kind_of_dir = directory_kind(cfg)
    if not path.exists():
        raise UserError(f"data path does not exist: {src}; pass {kind_of_dir}, a .csv/.jsonl file or hf:NAME")
    if path.is_dir():
        wanted = [KAGGLE_FILES[only]] if only else list(KAGGLE_FILES.values())
        names = ", ".join(wanted)
        missing = [f for f in wanted if not (path / f).is_file()]
        if only and missing:
            raise UserError(f"{src}: missing {names}; {kind_of_dir} with {names} is needed for its {only} split, "
                            "or pass one .csv/.jsonl file")
        if len(missing) == len(wanted):
            raise UserError(f"{src} is not a dataset directory: {kind_of_dir} has {names}; "
                            "or pass one .csv/.jsonl file")
        if missing:
            raise UserError(f"{src}: missing {', '.join(missing)}; {kind_of_dir} has {names}")
    elif path.suffix.lower() not in FILE_KINDS:
        raise UserError(f"{src} is not a dataset: use a .csv or .jsonl file, {kind_of_dir} or hf:NAME")


def _read_source(cfg: DataConfig, seed: int, only: str | None = None, whole_file: bool = False) -> dict[str, Any]:
    """{"train", "validation", "test"} -> raw Dataset with the configured columns (and an id); with
    `only`, just that split ({only: Dataset}), read from its own file where the source has one per
    split; with `whole_file` (and `only`), a single file's every row as that split."""
    check_source(cfg, only)
    src = cfg.source.strip()
    if src.startswith("hf:"):
        return _read_hub(src, cfg, seed, only)
    path = Path(src).expanduser()
    if path.is_dir():
        raw = {}
        for split, name in KAGGLE_FILES.items():
            if only in (None, split):
                ds = _load_file(path / name, "csv", cfg)
                _check_columns(ds, str(path / name), cfg)
                raw[split] = _with_ids(ds, cfg)
        return raw
    ds = _load_file(path, FILE_KINDS[path.suffix.lower()], cfg)
    _check_columns(ds, src, cfg)
    if whole_file and only:
        return {only: _with_ids(ds, cfg)}
    return _only(_split_missing({"train": _with_ids(ds, cfg)}, cfg, seed), only)


def _only(raw: dict[str, Any], only: str | None) -> dict[str, Any]:
    return {only: raw[only]} if only and only in raw else raw


# hf:NAME[:CONFIG] -> the DatasetDict loaded in this process (`hub_dataset` returns it)
_HUB_LOADED: dict[str, Any] = {}


def _load_hub(src: str):
    """`datasets.load_dataset` of hf:NAME[:CONFIG]; with the Hub unreachable, from the cache only
    (at once, not after the client's retries)."""
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    name, _, conf = src[3:].partition(":")
    cache_only = use_cache_only()  # unreachable: the process is offline from here on
    try:
        with datasets_quiet():
            raw = datasets.load_dataset(name, conf or None)
    except Exception as e:  # noqa: BLE001
        why = "the Hub is unreachable and it is not in the local cache" if cache_only else first_line(e)[:160]
        raise UserError(
            f"cannot load dataset '{name}' from the Hugging Face Hub ({why}); offline, run "
            "`sumtune download data` where you have internet and pass the directory with --data DIR"
        ) from None
    _HUB_LOADED[src] = raw
    return raw


def hub_dataset(src: str):
    """The DatasetDict of hf:NAME[:CONFIG] as this process loaded it, else loaded now (cache only
    when the Hub is unreachable)."""
    loaded = _HUB_LOADED.get(src)
    return loaded if loaded is not None else _load_hub(src)


def _read_hub(src: str, cfg: DataConfig, seed: int, only: str | None = None) -> dict[str, Any]:
    raw = _load_hub(src)
    if only and only in raw:  # the one split read: the others need not be there
        _check_columns(raw[only], f"{src} ({only})", cfg)
        return {only: _with_ids(raw[only], cfg)}
    if "train" not in raw:
        raise UserError(f"{src} has splits {', '.join(raw)}; sumtune needs a 'train' split (validation/test optional)")
    out = {}
    for split in SPLITS:
        if split in raw:
            _check_columns(raw[split], f"{src} ({split})", cfg)
            out[split] = _with_ids(raw[split], cfg)
    return _only(_split_missing(out, cfg, seed), only)


def _split_missing(raw: dict[str, Any], cfg: DataConfig, seed: int) -> dict[str, Any]:
    """Carve the missing validation/test splits out of train, by ratio, with the seed."""
    missing = [s for s in ("validation", "test") if s not in raw]
    if not missing:
        return raw
    full = raw["train"]
    n = len(full)
    sizes = {s: max(1, round(n * (cfg.val_ratio if s == "validation" else cfg.test_ratio))) for s in missing}
    if n - sum(sizes.values()) < 1:
        raise UserError(f"{cfg.source}: only {n} examples; too few to split into train/validation/test")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    parts, start = {}, 0
    for s in missing:
        parts[s] = perm[start : start + sizes[s]]
        start += sizes[s]
    parts["train"] = perm[start:]
    out = dict(raw)
    for s, idx in parts.items():
        key = cache_key(full._fingerprint, "split", seed, cfg.val_ratio, cfg.test_ratio, tuple(missing), s)
        out[s] = full.select(np.sort(idx), new_fingerprint=key)
    return out


def _subset(ds, n: int, seed: int, split: str):
    """A seeded subset of n rows kept in file order; a larger n yields a superset."""
    if not 0 < n < len(ds):
        return ds
    idx = np.sort(np.random.default_rng([seed, SPLITS.index(split) + 2]).permutation(len(ds))[:n])
    return ds.select(idx, new_fingerprint=cache_key(ds._fingerprint, "subset", seed, n))


def _standardise(ds, split: str, cfg: DataConfig):
    """Rename to id/article/summary, clean, and drop rows whose article or summary is empty."""
    art_c, sum_c, id_c, do_clean = cfg.article_column, cfg.summary_column, cfg.id_column, cfg.clean

    def fn(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"id": [], "article": [], "summary": []}
        for i, a, s in zip(batch[id_c], batch[art_c], batch[sum_c]):
            a = a if isinstance(a, str) else ""
            s = s if isinstance(s, str) else ""
            a, s = (clean_article(a), clean_summary(s)) if do_clean else (a.strip(), s.strip())
            if a and s:
                out["id"].append(str(i))
                out["article"].append(a)
                out["summary"].append(s)
        return out

    fp = cache_key(ds._fingerprint, "standardise-v2", art_c, sum_c, id_c, do_clean)
    return ds.map(fn, batched=True, remove_columns=ds.column_names, new_fingerprint=fp,
                  num_proc=num_workers(cfg, len(ds)), desc=f"cleaning {split}")


def split_sizes(cfg: DataConfig, seed: int, only: str | None = None, whole_file: bool = False) -> dict[str, int]:
    """Rows per split of the whole source, before subsets and before empty rows are skipped: the
    size a projection to the full split scales to (reads what `load_splits` reads, from its cache)."""
    return {split: len(ds) for split, ds in _read_source(cfg, seed, only, whole_file).items()}


def load_splits(cfg: DataConfig, seed: int, only: str | None = None, whole_file: bool = False):
    """Cleaned train/validation/test with columns id, article, summary (str); subsets are seeded.

    ``max_train_samples`` limits train, ``max_eval_samples`` validation and test,
    ``max_test_samples`` (when > 0) test instead. Rows with an empty article or summary
    are skipped and counted in one log line; a split left empty is an error. `only` reads just
    that split (a directory needs only its file), `whole_file` a single file whole as that split
    (`_read_source`).
    """
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    raw = _read_source(cfg, seed, only, whole_file)
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples,
              "test": cfg.max_test_samples or cfg.max_eval_samples}
    out, skipped = {}, {}
    for split in (s for s in SPLITS if s in raw):
        ds = _subset(raw[split], limits[split], seed, split)
        out[split] = _standardise(ds, split, cfg)
        skipped[split] = len(ds) - len(out[split])
        if len(out[split]) == 0:
            raise UserError(
                f"{cfg.source}: split '{split}' has no usable examples ({len(ds)} skipped: empty article or summary)"
            )
    if sum(skipped.values()):
        log.warning("skipped %d examples with an empty or missing article/summary (%s)", sum(skipped.values()),
                    ", ".join(f"{s} {n}" for s, n in skipped.items()))
    return datasets.DatasetDict(out)
