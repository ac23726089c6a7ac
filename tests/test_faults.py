"""Reliability under faults: every write site fails in one line (exit 2) with what was
written before it byte-identical, no temporary file left, and `--resume` afterwards
bit-identical to an uninterrupted run; one writer per run directory.

Faults are injected by raising OSError(ENOSPC / EACCES / EROFS) from the write functions
(no root or special filesystem needed)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from test_resume import STEPS, _argv, _events, _same_as_reference, _start, _wait_for, one_thread, setup  # noqa: F401

from sumtune import io as sio
from sumtune.cli import main

REASONS = {errno.ENOSPC: "no space left", errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}


def _one_line_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # progress bars may stand before it
    assert line.startswith("sumtune: error: "), err
    return line


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every finished file of the run's checkpoints and best weights."""
    return {str(p.relative_to(run)): p.read_bytes() for sub in ("checkpoints", "adapter") if (run / sub).exists()
            for p in sorted((run / sub).rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)}


def _leftovers(root: Path) -> list[str]:
    """Temporary files or directories of io's atomic writers (dot-names) other than the lock."""
    return [str(p) for p in root.rglob(".*") if p.name != ".lock"]


class _Fault:
    """Raise OSError(code) from the first write whose path `matches`, after taking a snapshot."""

    def __init__(self, run: Path, code: int, matches):
        self.run, self.code, self.matches = run, code, matches
        self.before: dict[str, bytes] | None = None

    def check(self, path) -> None:
        if self.before is None and self.matches(str(path)):
            self.before = _snapshot(self.run)
            raise OSError(self.code, os.strerror(self.code), str(path))


def _inject(monkeypatch, fault: _Fault) -> None:
    """Through the three primitives every write uses: tensors, files, directories."""
    real_save, real_atomic, real_swap = sio.save_file, sio._atomic, sio.atomic_dir._swap_in

    def save_file(tensors, filename, metadata=None):
        fault.check(filename)
        return real_save(tensors, filename, metadata=metadata)

    def atomic(path, write, needed=None):
        with sio.writing(path, needed):  # where the real one would raise it
            fault.check(path)
        return real_atomic(path, write, needed)

    def swap_in(self):
        fault.check(self.path)
        return real_swap(self)

    monkeypatch.setattr(sio, "save_file", save_file)
    monkeypatch.setattr(sio, "_atomic", atomic)
    monkeypatch.setattr(sio.atomic_dir, "_swap_in", swap_in)


SITES = {
    "checkpoint": lambda p: "step-0000004" in p,  # the second checkpoint (end of epoch 1)
    "best weights": lambda p: p.endswith("/adapter"),  # the second save (step 8); the first succeeds
    "results": lambda p: p.endswith("results.json"),
}


@pytest.mark.parametrize("site, code", [("checkpoint", errno.ENOSPC), ("checkpoint", errno.EACCES),
                                        ("checkpoint", errno.EROFS), ("best weights", errno.ENOSPC),
                                        ("results", errno.ENOSPC)])
def test_a_failed_write_is_one_line_keeps_what_was_written_and_resumes_exactly(setup, tmp_path, monkeypatch, capsys,
                                                                              site, code):
    matches = SITES[site]
    model, data, ref = setup
    run = tmp_path / "run"
    fault = _Fault(run, code, matches)
    if site == "best weights":  # the first save of the best weights must succeed: fail the second
        first = {"seen": False}

        def second_adapter(p: str) -> bool:
            if matches(p) and not first["seen"]:
                first["seen"] = True
                return False
            return matches(p)

        fault.matches = second_adapter
    _inject(monkeypatch, fault)
    line = _one_line_error(_argv(model, data, run), capsys)
    assert fault.before is not None, f"the {site} write was never attempted"
    assert REASONS[code] in line and "written before is intact" in line and "--resume" in line, line
    assert _snapshot(run) == fault.before  # the previous checkpoint and best weights, byte for byte
    assert _leftovers(run) == []
    monkeypatch.undo()
    assert main(_argv(model, data, run, "--resume")) == 0
    _same_as_reference(run, ref)


def test_full_disk_on_metrics_records(setup, tmp_path, monkeypatch, capsys):
    from sumtune.training.records import Records

    model, data, ref = setup
    run = tmp_path / "run"
    real, calls = Records.write, {"n": 0}

    def write(self, event):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 2, after the step-4 checkpoint
            with sio.writing(self.path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, event)

    monkeypatch.setattr(Records, "write", write)
    line = _one_line_error(_argv(model, data, run), capsys)
    assert "metrics.jsonl" in line and "no space left" in line and "step-0000004" in line
    monkeypatch.undo()
    assert main(_argv(model, data, run, "--resume")) == 0
    _same_as_reference(run, ref)


def test_full_disk_in_the_datasets_cache(setup, tmp_path, monkeypatch, capsys):
    from sumtune.training import state

    model, data, _ = setup

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state, "tokenize_splits", full)
    line = _one_line_error(_argv(model, data, tmp_path / "run"), capsys)
    assert "cannot write" in line and "no space left" in line and not (tmp_path / "run").exists()


def test_space_check_warns_before_training(setup, tmp_path, monkeypatch, caplog):
    from sumtune.training import resume

    model, data, _ = setup
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with caplog.at_level("WARNING"):
        assert main(_argv(model, data, tmp_path / "run", "--max-steps", "1")) == 0
    assert any("less than 3x the largest write" in r.getMessage() for r in caplog.records)


def test_unwritable_output_dir_is_refused_before_the_model_loads(setup, tmp_path, monkeypatch, capsys):
    from sumtune.training import state

    model, data, _ = setup
    (tmp_path / "afile").write_text("x")

    def no_model(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(state, "load_model", no_model)
    line = _one_line_error(_argv(model, data, tmp_path / "afile" / "run"), capsys)
    assert "cannot write" in line and "afile" in line


@pytest.mark.parametrize("what", ["evaluate", "compare", "export"])
def test_eval_compare_and_export_writes_fail_in_one_line(setup, tmp_path, monkeypatch, capsys, what):
    model, data, _ = setup
    run = tmp_path / "run"
    assert main(_argv(model, data, run, "--max-steps", "2")) == 0
    target = {"evaluate": (["evaluate", str(run), "--limit", "2", "--max-new-tokens", "3"], "metrics.json"),
              "compare": (["compare", str(run), "--output", str(tmp_path / "cmp")], "compare.md"),
              "export": (["export", str(run), str(tmp_path / "out")], "out")}[what]
    fault = _Fault(run, errno.ENOSPC, lambda p: p.endswith(target[1]))
    _inject(monkeypatch, fault)
    line = _one_line_error(target[0], capsys)
    assert "no space left" in line and target[1] in line and "written before is intact" in line
    assert _leftovers(tmp_path) == []
    if what == "export":
        assert not (tmp_path / "out").exists()


def test_a_second_trainer_on_the_same_directory_is_refused(setup, tmp_path, capsys):
    model, data, ref = setup
    run = tmp_path / "run"
    first = _start(_argv(model, data, run, "--set", "train.eval_steps=1"))  # slower: holds the lock a while
    try:
        _wait_for(first, run, 1)
        line = _one_line_error(_argv(model, data, run), capsys)
        assert f"PID {first.pid}" in line and "being written by another sumtune process" in line
        line = _one_line_error(_argv(model, data, run, "--resume"), capsys)  # a resume is a writer too
        assert f"PID {first.pid}" in line
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    steps = [e["step"] for e in _events(run) if e["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # each step once, from the one writer


def test_the_lock_names_its_holder_and_is_released_at_exit(tmp_path):
    """flock is per open file: a second opening (as another process would) is refused while the
    first holds it, and succeeds once it is released."""
    from sumtune import lock
    from sumtune.errors import UserError

    with lock.DirLock(tmp_path / "exp"), lock.DirLock(tmp_path / "exp"):  # re-entrant in one process
        with pytest.raises(UserError, match=f"being written by another sumtune process \\(PID {os.getpid()}: sumtune"):
            lock._acquire(tmp_path / "exp", "experiment directory")
    os.close(lock._acquire(tmp_path / "exp", "experiment directory"))


def test_a_second_evaluation_of_a_split_is_refused(setup, tmp_path, capsys):
    from sumtune.lock import _acquire

    model, data, _ = setup
    run = tmp_path / "run"
    assert main(_argv(model, data, run, "--max-steps", "2")) == 0
    fd = _acquire(run / "eval" / "test", "evaluation directory")  # as another evaluate would hold it
    try:
        line = _one_line_error(["evaluate", str(run), "--limit", "1", "--max-new-tokens", "2"], capsys)
        assert "eval/test is being written by another sumtune process" in line
    finally:
        os.close(fd)
    assert main(["evaluate", str(run), "--limit", "1", "--max-new-tokens", "2"]) == 0


def test_only_the_main_process_of_a_launch_locks(tmp_path, monkeypatch):
    from sumtune import lock

    monkeypatch.setenv("RANK", "1")  # as torchrun/accelerate set it in a second process
    with lock.DirLock(tmp_path / "run"):
        assert not (tmp_path / "run" / ".lock").exists()
    monkeypatch.setenv("RANK", "0")
    with lock.DirLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").is_file()
