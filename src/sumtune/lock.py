"""One writer per directory: an exclusive advisory lock on DIR/.lock.

`fcntl.flock` is held by the open file, so the kernel drops it when the holder exits in any
way - SIGKILL included - and a dead writer never leaves a stale lock to clean by hand. The
file itself stays (deleting a lock file races with a waiter that has it open); it holds the
holder's PID and command so a refused writer can say who has the directory.

Locks are re-entrant within a process: `experiment` holds OUT while `compare` writes its
tables there. Under `accelerate launch` only the main process (RANK 0 in the launcher's
environment) takes a lock: the others write nothing the lock guards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sumtune.errors import UserError

LOCK_NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # resolved directory -> (fd, depth)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"PID {info.get('pid', '?')}: {info.get('command', '?')}"


class DirLock:
    """`with DirLock(directory):` - exclusive writer of `directory` for the block."""

    def __init__(self, directory: str | Path, what: str = "run directory"):
        self.directory = Path(directory)
        self.what = what

    def __enter__(self) -> DirLock:
        if not is_main_process():
            return self
        key = self.directory.resolve()
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            return self
        _held[key] = (_acquire(self.directory, self.what), 1)
        return self

    def __exit__(self, *exc) -> None:
        if not is_main_process():
            return
        key = self.directory.resolve()
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
        os.close(fd)  # releases the lock


def _acquire(directory: Path, what: str) -> int:
    import fcntl  # late: fcntl is POSIX-only; importing sumtune works where it is missing

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write the {what} {directory}: {e.strerror}; choose a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f"{directory} is being written by another sumtune process ({holder}); wait for it to "
                        f"finish, or stop it, or write to another directory") from None
    record = {"pid": os.getpid(), "command": " ".join(["sumtune", *sys.argv[1:]])[:500], "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    return fd


def is_main_process() -> bool:
    """Whether this is the only or the first process of a launch (torchrun/accelerate set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0
