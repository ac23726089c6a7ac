"""Atomic, pickle-free persistence: safetensors for tensors, JSON/YAML for the rest.

Every write goes to a temporary name in the same directory, is fsynced, then
renamed over the target, so a killed process never leaves a half-written file. A write
that fails (no space left, permission denied, a read-only file system, a path part that is
a file) removes its temporary file and raises `WriteError`: one line naming the path, the
reason and the bytes it needed; what was written before is untouched.

Modes: a temporary file from `tempfile` is private (0600, a directory 0700); before it is renamed
into place it gets the mode an ordinary `open` would give it, 0666 (0777 for a directory) less the
process's umask, so written files are as shareable as the user's umask allows (0644 under 022).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sumtune.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REASONS = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a directory", errno.EISDIR: "it is a directory",
}


class WriteError(UserError):
    """A file or directory that could not be written (see the module docstring)."""

    def __init__(self, path: Path, code: int | None, detail: str, needed: int | None = None):
        self.path, self.errno = Path(path), code
        reason = _REASONS.get(code, detail) if code is not None else detail
        size = f" (it needed about {needed / 2**20:.1f} MB)" if needed and code in (errno.ENOSPC, errno.EDQUOT) else ""
        super().__init__(f"cannot write {path}: {reason}{size}; what was written before is intact (writes are atomic)")


def _errno_of(e: BaseException) -> int | None:
    """The OS error number of an OSError, or of a safetensors error that wraps one ("os error 28")."""
    if isinstance(e, OSError):
        return e.errno
    found = re.search(r"os error (\d+)", str(e))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def writing(path: Path, needed: int | None = None, only: tuple[int, ...] | None = None) -> Iterator[None]:
    """Turn an OS-level failure of the block into a WriteError naming `path`; with `only`,
    just those error numbers (a block that also reads lets its other errors through)."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, SafetensorError) as e:
        code = _errno_of(e)
        if only is not None and code not in only:
            raise
        detail = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise WriteError(path, code, detail, needed) from None


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # what only a write can hit


_UMASK: int | None = None  # where /proc cannot tell it: read once


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status); elsewhere read once
    by setting and restoring it (`os.umask` can only be read that way), then remembered."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def default_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file (or directory) made by `tempfile` the mode `open` (`mkdir`) would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def default_modes(directory: str | Path) -> None:
    """`default_mode` for `directory` and everything in it (what a library wrote through its own
    temporary files, e.g. Transformers' weight shards, is private too), links left alone."""
    for root, _dirs, files in os.walk(directory):  # a linked directory is not entered
        default_mode(root, directory=True)
        for path in (os.path.join(root, name) for name in files):
            if not os.path.islink(path):
                default_mode(path)


def _atomic(path: Path, write, needed: int | None = None) -> None:
    with writing(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            default_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data), len(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors.save_file through a temporary name + fsync + rename."""
    path = Path(path)
    with writing(path, sum(t.numel() * t.element_size() for t in tensors.values())):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            default_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; refuse pickles; one-line error on a corrupt file."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise UserError(
            f"{path}: refusing to load a pickle file (it can run arbitrary code); "
            "convert it to .safetensors (safetensors.torch.save_file) and pass that instead"
        )
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


class atomic_dir:
    """Build a directory under a temporary name, then swap it in whole:

        with atomic_dir(run / "adapter") as tmp:
            model.save_pretrained(tmp)
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            default_mode(self.tmp, directory=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            code = _errno_of(exc) if issubclass(exc_type, (OSError, SafetensorError)) else None
            if code in _REASONS:  # a failed write in the block (a failed read stays what it is)
                raise WriteError(self.path, code, getattr(exc, "strerror", None) or str(exc)) from None
            return
        try:
            self._swap_in()
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise WriteError(self.path, e.errno, e.strerror or str(e)) from None

    def _swap_in(self) -> None:
        for f in self.tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except OSError:
            if old is not None:
                os.replace(old, self.path)  # the previous directory back in place
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
