"""What a run was made from, by content: the base model (config + weight values)
and the data source (file bytes, or the Hub dataset's own fingerprint).

- `fingerprint(name, model)`: the base model as `modeling.load_model` returned it,
  before a method modifies it. `weights_sha` hashes every state_dict tensor's bytes
  as loaded in fp32 (sorted names; a tied tensor once, its other names recorded as
  aliases; dtype and shape included), so two checkpoints of one architecture differ.
  `"fingerprint": FINGERPRINT_VERSION` marks the scheme; runs recorded before it
  (scheme 1 hashed only file names, sizes and tensor shapes) are refused by
  `runs.check_base` until re-recorded with `python -m sumtune.fingerprints upgrade`.
- `data_fingerprint(cfg)`: sha256 of each source file's bytes, streamed (cached
  in-process per (path, size, mtime_ns)); for ``hf:`` sources, the per-split
  fingerprints `datasets` gives the loaded dataset (they derive from the dataset's
  name, config, version and revision hash), without downloading again.

Cost (measure with bench/fingerprint_cost.py on your machine): one pass of sha256
over the weights, about as long as reading them once from the page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from sumtune.config import load_run_config
from sumtune.data import KAGGLE_FILES, hub_dataset
from sumtune.errors import UserError
from sumtune.gguf_files import source_record
from sumtune.io import atomic_write_json
from sumtune.methods.base import META_FILE, read_meta
from sumtune.modeling import load_model

FINGERPRINT_VERSION = 2
# config keys that say how the model was saved or is run, not what it computes
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset",
                 "_attn_implementation", "architectures", "use_cache", "pad_token_id")


# --- base model -----------------------------------------------------------------


def config_sha(model) -> str:
    cfg = model.config.to_dict()
    for k in _CONFIG_NOISE:
        cfg.pop(k, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_sha(model: torch.nn.Module) -> str:
    """sha256 over the state_dict in sorted name order: for each distinct tensor its name,
    dtype, shape and bytes (floating tensors as fp32); a tensor shared under several names
    (tied embeddings) is hashed once, the other names as `name=first_name`."""
    h = hashlib.sha256()
    sd = model.state_dict()
    first: dict[tuple, str] = {}
    for name in sorted(sd):
        t = sd[name].detach()
        key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype)
        if key in first:
            h.update(f"{name}={first[key]}\n".encode())
            continue
        first[key] = name
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.to(torch.float32)
        t = t.cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def fingerprint(name: str, model) -> dict:
    """What identifies a base model: its name/path (informative only), a hash of its
    config, and a hash of its weight values (`weights_sha`); for a GGUF file (or a named real
    model), also "gguf": its file name, sha256, size, quantization and architecture
    (`gguf_files.source_record`; informative: the weight values already cover the content)."""
    fp = {"name": name, "config_sha": config_sha(model), "weights_sha": weights_sha(model),
          "model_type": model.config.model_type, "fingerprint": FINGERPRINT_VERSION}
    gguf = source_record(name)
    return fp | {"gguf": gguf} if gguf else fp


def legacy_weights_sha(name: str, model) -> str:
    """Scheme 1 (before content hashing): weight file names and sizes, tensor names and shapes."""
    files = []
    p = Path(name)
    if p.is_dir():
        files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
    shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(json.dumps([files, shapes]).encode()).hexdigest()[:16]


# --- data -----------------------------------------------------------------------

_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed; cached in-process per (path, size, mtime_ns)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        with open(p, "rb") as f:
            _FILE_CACHE[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _FILE_CACHE[key]


def _combine(files: dict[str, dict]) -> str:
    lines = "".join(f"{n}:{f['sha256']}\n" for n, f in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def data_fingerprint(cfg, hub: Any = None) -> dict:
    """What the data source `cfg.source` (a `config.DataConfig`) holds, by content only
    (the path and the row-selecting keys are recorded separately, in the config):

    - a file: {"kind": "file", "bytes": N, "sha256": of its bytes} (its name is not content);
    - a Kaggle directory: {"kind": "kaggle_dir", "files": {NAME: {"sha256", "bytes"}} for
      those of train.csv, validation.csv and test.csv it holds, "sha256": over the names and their hashes};
    - ``hf:NAME[:CONFIG]``: {"kind": "hf", "dataset", "config", "splits": {split:
      {"fingerprint", "rows"}}, "sha256"} from the dataset as `datasets` loaded it:
      `hub` (the DatasetDict / {split: Dataset} `datasets.load_dataset` returned), else
      the one `data.load_splits` loaded in this process, else loaded (from the cache) here.

    "sha256" summarises the whole; two sources with equal "sha256" hold the same data.
    """
    src = cfg.source.strip()
    if src.startswith("hf:"):
        return _hub_fingerprint(src, hub)
    path = Path(src).expanduser()
    if path.is_dir():
        files = {n: {"sha256": file_sha256(path / n), "bytes": (path / n).stat().st_size}
                 for n in sorted(KAGGLE_FILES.values()) if (path / n).is_file()}  # e.g. only test.csv to evaluate
        if not files:
            raise UserError(f"{src} is not a dataset directory: it has none of {', '.join(KAGGLE_FILES.values())}")
        kind = "kaggle_dir"
    elif path.is_file():
        files = {path.name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}}
        kind = "file"
    else:
        raise UserError(f"data path does not exist: {src}; pass a dataset directory, a .csv/.jsonl file or hf:NAME")
    if kind == "file":  # the name is not content: the same bytes elsewhere, or renamed, are the same data
        return {"kind": kind, "bytes": files[path.name]["bytes"], "sha256": files[path.name]["sha256"]}
    return {"kind": kind, "files": files, "sha256": _combine(files)}


def data_label(record: dict) -> str:
    """A dataset as a report names it: its preset, source and content fingerprint (12 hex digits),
    e.g. "xsum: hf:EdinburghNLP/xsum (sha256 0123456789ab)"; `record` as `evaluate` writes it."""
    sha = f"sha256 {record['sha256'][:12]}" if record.get("sha256") else "no fingerprint"
    preset = record.get("preset")
    return f"{preset + ': ' if preset and preset != 'none' else ''}{record.get('source')} ({sha})"


def _hub_fingerprint(src: str, hub: Any) -> dict:
    name, _, conf = src[3:].partition(":")
    if hub is None:
        hub = hub_dataset(src)
    splits = {s: {"fingerprint": ds._fingerprint, "rows": len(ds)} for s, ds in sorted(hub.items())}
    digest = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    return {"kind": "hf", "dataset": name, "config": conf or None, "splits": splits, "sha256": digest}


# --- re-recording a scheme-1 run ---------------------------------------------------


def upgrade_run(run_dir: str | Path, base_model: str | None = None) -> dict:
    """Re-record the base-model fingerprint of a run saved under scheme 1, after checking
    what scheme 1 can check (model type, config, weight file sizes and tensor shapes).
    The caller asserts the base model is the one the run was trained on: scheme 1 never
    recorded the weight values, so nothing can prove it. Returns the new fingerprint."""
    run = Path(run_dir)
    adapter = run / "adapter"
    meta = read_meta(adapter)
    saved = meta["base_model"]
    if saved.get("fingerprint", 1) >= FINGERPRINT_VERSION:
        return saved
    name = base_model or load_run_config(run).model.name
    model = load_model(name)
    old = {"model_type": model.config.model_type, "config_sha": config_sha(model),
           "weights_sha": legacy_weights_sha(name, model)}
    diff = [k for k, v in old.items() if saved.get(k) != v]
    if diff:
        raise UserError(f"{adapter} was trained on '{saved.get('name')}', and '{name}' differs from it "
                        f"({', '.join(diff)}); pass the base model it was trained on with --model")
    new = fingerprint(name, model)
    meta["base_model"] = new
    meta["base_model_scheme1"] = saved
    atomic_write_json(adapter / META_FILE, meta)
    return new


def main(argv: list[str] | None = None) -> int:
    """python -m sumtune.fingerprints upgrade RUN [--model DIR|NAME]"""
    p = argparse.ArgumentParser(prog="python -m sumtune.fingerprints")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upgrade", help="re-record a run's base-model fingerprint by weight values (scheme 2); "
                                        "you assert the base model is the one the run was trained on")
    up.add_argument("run")
    up.add_argument("--model", default=None, help="the base model (default: the run's model.name)")
    args = p.parse_args(argv)
    try:
        fp = upgrade_run(args.run, args.model)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run}: base model fingerprint {fp['weights_sha']} (scheme {fp['fingerprint']})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    sys.exit(main())
