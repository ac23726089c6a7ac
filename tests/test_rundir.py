"""RunDir: the one owner of RUN/'s layout and of "is this run finished?"."""

from __future__ import annotations

import pytest

from sumtune.errors import UserError
from sumtune.io import atomic_write_json
from sumtune.runs import RunDir


def test_layout_and_states(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.present() == [] and not run.is_finished()
    with pytest.raises(UserError, match="not a sumtune run directory"):
        run.check_finished()
    run.path.mkdir()
    run.config.write_text("method: {}\n")
    atomic_write_json(run.results, {"method": "lora"})
    assert run.present() == ["config.yaml", "results.json"] and not run.is_finished()
    with pytest.raises(UserError, match=r"unfinished run .*--resume"):
        run.check_finished()
    atomic_write_json(run.results, {"method": "lora", "finished": True})
    with pytest.raises(UserError, match="no weights"):
        run.check_finished()
    run.adapter.mkdir()
    assert run.is_finished() and run.check_finished() is run
    assert run.eval_dir("test") == run.path / "eval" / "test" and str(run) == str(run.path)
    run.results.write_text("{not json")  # a damaged record is not a finished run
    assert not run.is_finished()
