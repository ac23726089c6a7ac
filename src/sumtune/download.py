"""`sumtune download`: CNN/DailyMail from Kaggle (kagglehub) or the Hugging Face Hub
(datasets), and models from the Hub (huggingface_hub), into local directories that
``--data DIR`` and ``--model DIR`` accept. Needs internet; offline it fails in one
line that says how to pass local paths instead."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sumtune.errors import UserError
from sumtune.io import atomic_dir, atomic_write_json

KAGGLE_HANDLE = "gowrishankarp/newspaper-text-summarization-cnn-dailymail"
HF_DATASET = "abisee/cnn_dailymail:3.0.0"
SPLITS = ("train", "validation", "test")
# Weights (safetensors only: never pickles), config and tokenizer files, and the model card
# (README.md: its license goes into an export's card).
MODEL_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "README.md"]
DOWNLOAD_RECORD = "sumtune_download.json"  # {"repo_id"}: the Hub id an export's card names as base_model

# Exception class names (anywhere in the cause chain) that mean "no network".
_OFFLINE = {
    "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectError", "ConnectTimeout",
    "TimeoutError", "Timeout", "TransportError", "NewConnectionError", "NameResolutionError",
    "MaxRetryError", "gaierror",
}


def _is_offline(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(c.__name__ in _OFFLINE for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def _place(src: Path, dst: Path) -> None:
    """Put `src` at `dst` whole: a hard link where possible (no second copy of a
    1.3 GB file), else a copy; through a temporary name, so `dst` is never partial."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _wrote(out: Path, what: str, use: str) -> None:
    """The command's last line: the files written, what they hold, how to use them."""
    print(f"wrote {', '.join(str(out / f'{s}.csv') for s in SPLITS)}: {what}; {use}")


def download_data(source: str, name: str | None, out: str | Path) -> Path:
    """CNN/DailyMail as ``out/{train,validation,test}.csv`` (columns id, article, highlights)."""
    out = Path(out)
    if source == "kaggle":
        return _kaggle(name or KAGGLE_HANDLE, out)
    if source == "hf":
        return _hub_dataset(name or HF_DATASET, out)
    raise UserError(f"unknown download source '{source}'; use kaggle or hf")


def _no_internet(what: str, where: str, retry: str, local: str) -> UserError:
    return UserError(
        f"no internet: cannot reach {where} to download {what}; run `{retry}` on a machine with internet "
        f"and copy the directory here, or pass local files instead ({local})"
    )


def _kaggle(handle: str, out: Path) -> Path:
    import kagglehub

    try:
        root = Path(kagglehub.dataset_download(handle))
    except Exception as e:  # noqa: BLE001 - one line, with what to do
        if _is_offline(e):
            raise _no_internet(f"Kaggle dataset {handle}", "kaggle.com",
                               f"sumtune download data --source kaggle --out {out}",
                               "--data DIR with train.csv, validation.csv, test.csv, or --data FILE.csv") from None
        raise UserError(
            f"Kaggle download of {handle} failed ({_first_line(e)}); check the handle, and your Kaggle "
            "credentials (KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json) if it needs them"
        ) from None
    files = {}
    for split in SPLITS:
        found = sorted(root.rglob(f"{split}.csv"))
        if not found:
            listing = ", ".join(sorted(p.name for p in root.rglob("*") if p.is_file())[:10]) or "nothing"
            raise UserError(f"Kaggle dataset {handle} has no {split}.csv (found: {listing}); pass --name of a "
                            "CNN/DM dataset with train.csv, validation.csv and test.csv")
        files[split] = found[0]
    for split, src in files.items():
        _place(src, out / f"{split}.csv")
    _wrote(out, f"CNN/DailyMail from Kaggle ({handle})", f"train with --data {out}")
    return out


def _hub_dataset(spec: str, out: Path) -> Path:
    import datasets

    from sumtune.offline import use_cache_only

    name, _, conf = spec.partition(":")
    use_cache_only()  # the Hub unreachable: offline at once (the cache still serves), not after retries
    try:
        raw = datasets.load_dataset(name, conf or None)
    except Exception as e:  # noqa: BLE001
        if _is_offline(e):
            raise _no_internet(f"dataset {spec}", "the Hugging Face Hub",
                               f"sumtune download data --source hf --name {spec} --out {out}",
                               "--data DIR with train.csv, validation.csv, test.csv, or --data FILE.csv") from None
        raise UserError(f"cannot download dataset '{spec}' from the Hugging Face Hub: {_first_line(e)}") from None
    missing = [s for s in SPLITS if s not in raw]
    cols = raw[next(iter(raw))].column_names
    if missing or not {"article", "highlights"} <= set(cols):
        raise UserError(
            f"{spec} is not in the CNN/DM layout (splits {', '.join(raw)}; columns {', '.join(cols)}); "
            f"train on it directly with --data hf:{spec} and --set data.article_column=... "
            "--set data.summary_column=..."
        )
    for split in SPLITS:
        ds = raw[split]
        if "id" not in ds.column_names:
            ds = ds.add_column("id", [str(i) for i in range(len(ds))])
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{split}.csv.", dir=out)
        os.close(fd)
        try:
            ds.select_columns(["id", "article", "highlights"]).to_csv(tmp, index=False)
            os.replace(tmp, out / f"{split}.csv")
        finally:
            Path(tmp).unlink(missing_ok=True)
    _wrote(out, f"{spec} in the Kaggle layout", f"train with --data {out}")
    return out


def download_model(name: str, out: str | Path | None = None) -> Path:
    """A Hub model's safetensors weights, config and tokenizer files in ``out``
    (default ``models/NAME``), swapped in whole once complete."""
    from huggingface_hub import snapshot_download

    out = Path(out) if out else Path("models") / name
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out} exists and is not a model directory; pass a new directory with --out")
    with atomic_dir(out) as tmp:
        try:
            snapshot_download(repo_id=name, local_dir=tmp, allow_patterns=MODEL_FILES)
        except Exception as e:  # noqa: BLE001
            if _is_offline(e):
                raise _no_internet(f"model {name}", "the Hugging Face Hub",
                                   f"sumtune download model {name} --out {out}", "--model DIR") from None
            if {c.__name__ for c in type(e).__mro__} & {"RepositoryNotFoundError", "HFValidationError"}:
                raise UserError(f"model '{name}' is not on the Hugging Face Hub, or is gated/private "
                                "(log in with `hf auth login`); check the name") from None
            raise UserError(f"cannot download model '{name}': {_first_line(e)}") from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        if not any(tmp.glob("*.safetensors")):
            raise UserError(f"model '{name}' has no .safetensors weights on the Hub; sumtune does not load "
                            "pickled weights (.bin): convert them to safetensors and pass --model DIR")
        atomic_write_json(tmp / DOWNLOAD_RECORD, {"repo_id": name})
    print(f"wrote {out}: model {name} (weights, config, tokenizer); use --model {out}")
    return out
