"""Resumable training state.

RUN/checkpoints/step-0000123/ holds safetensors and JSON files (under FSDP, a `sharded/`
directory of each process's shards instead of the tensor files) plus manifest.json (each
file's SHA-256), written last inside a directory that is swapped in whole (`io.atomic_dir`);
the two newest are kept. A checkpoint that fails its manifest, or holds a file it does not
list, is skipped. Also: an optimizer's state_dict as safetensors + JSON, and the random
states as JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sumtune.errors import UserError
from sumtune.io import atomic_dir, atomic_save_tensors, atomic_write_json, load_tensors

CHECKPOINT_PREFIX = "step-"
MANIFEST = "manifest.json"
KEEP_CHECKPOINTS = 2


class CorruptCheckpoint(UserError):
    """A checkpoint directory that is incomplete or whose files do not match its manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def list_checkpoints(root: Path) -> list[Path]:
    """The checkpoint directories under `root`, oldest first (temporary names are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(root: Path, step: int, files: dict[str, Any], keep: int = KEEP_CHECKPOINTS,
                    staged: Path | None = None) -> Path:
    """Write `files` ({name.safetensors: {name: tensor}, name.json: JSON value}) as
    root/step-XXXXXXX atomically, then delete all but the `keep` newest checkpoints. Files
    already written in `staged` (each process's shards under FSDP) move in too, under the
    same manifest (files in its subdirectories by their relative paths)."""
    path = Path(root) / f"{CHECKPOINT_PREFIX}{step:07d}"
    with atomic_dir(path) as tmp:
        for f in sorted(staged.iterdir()) if staged is not None else ():
            f.replace(tmp / f.name)
        for name, content in files.items():
            if name.endswith(".safetensors"):
                atomic_save_tensors(tmp / name, content, metadata={"format": "pt"})
            elif name.endswith(".json"):
                atomic_write_json(tmp / name, content)
            else:
                raise ValueError(f"checkpoint file {name!r}: use .safetensors or .json")
        atomic_write_json(tmp / MANIFEST, {name: _sha256(tmp / name) for name in _files_under(tmp)})
    if staged is not None:
        shutil.rmtree(staged, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _files_under(path: Path) -> list[str]:
    """The files in a checkpoint directory, by their paths relative to it."""
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def load_checkpoint(path: Path, tensors: bool = True) -> dict[str, Any]:
    """The files of one checkpoint ({name: tensors or JSON value}); CorruptCheckpoint if any file
    is missing, truncated, changed since it was written or not in the manifest. Tensors are
    loaded from the top directory only, and only with `tensors`: otherwise (and for the
    shards in a subdirectory, which `training.reshard` reads slice by slice) the value is
    the file's path, its contents checked."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise CorruptCheckpoint(f"{path}: no {MANIFEST} (half-written)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{path / MANIFEST}: not valid JSON") from None
    unlisted = set(_files_under(path)) - set(manifest) - {MANIFEST}
    if unlisted:
        raise CorruptCheckpoint(f"{path / min(unlisted)}: not in the manifest")
    out: dict[str, Any] = {}
    for name, digest in manifest.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f}: missing")
        if _sha256(f) != digest:
            raise CorruptCheckpoint(f"{f}: contents do not match the manifest (corrupt)")
        if not name.endswith(".safetensors"):
            out[name] = json.loads(f.read_text(encoding="utf-8"))
        else:
            out[name] = load_tensors(f) if tensors and "/" not in name else f
    return out


def latest_checkpoint(root: Path, warn=None, tensors: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """(path, files) of the newest checkpoint that loads (`load_checkpoint`); a corrupt one is
    reported through `warn` (one line) and the previous one is tried. None when there is none."""
    candidates = list_checkpoints(root)
    for path in reversed(candidates):
        try:
            return path, load_checkpoint(path, tensors)
        except UserError as e:  # CorruptCheckpoint, or a truncated safetensors file
            if warn is not None:
                warn(f"checkpoint {path.name} is unusable ({e}); falling back to the previous one")
    if candidates:
        raise UserError(f"no usable checkpoint in {root} (all {len(candidates)} are corrupt); "
                        "start again with a new --output-dir")
    return None


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state_dict as (tensors for safetensors, JSON-able rest): tensor entries of
    state[i] go to "state.i.key", everything else (param_groups, scalar entries) to the JSON part."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `optimizer_to_files`: a state_dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU, CUDA) random states as JSON-able values."""
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": b64(torch.get_rng_state()),
        "cuda": [b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])
