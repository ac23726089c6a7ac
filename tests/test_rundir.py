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


def test_evaluations_on_other_data_live_beside_the_runs_own(tmp_path):
    run = RunDir(tmp_path / "run")
    own = {"source": "/d/cnndm", "preset": "none", "sha256": "ab" * 32, "is_training_data": True}
    xsum = {"source": "/d/xsum/test.jsonl", "preset": "xsum", "sha256": "0123456789" + "f" * 54, "is_training_data": False}
    plain = {"source": "/d/My Data/news.v2.jsonl", "preset": "none", "sha256": "9" * 64, "is_training_data": False}
    hub = {"source": "hf:EdinburghNLP/xsum:default", "preset": "none", "sha256": None, "is_training_data": False}
    assert run.eval_dir_for("test", own) == run.eval_dir("test") == run.path / "eval" / "test"
    assert run.eval_dir_for("test", {}) == run.eval_dir("test")  # an old record without the flag: the run's own
    assert run.eval_dir_for("test", xsum) == run.path / "eval" / "on-xsum-01234567" / "test"
    assert run.eval_dir_for("validation", plain) == run.path / "eval" / "on-news.v2-99999999" / "validation"
    label = run.eval_dir_for("test", hub).parent.name
    assert label.startswith("on-xsum-") and len(label) == len("on-xsum-") + 8  # no fingerprint: the source's hash
    assert run.other_evals("test") == []
    for record in (xsum, plain):  # complete evaluations only (a metrics.json), by label
        d = run.eval_dir_for("test", record)
        d.mkdir(parents=True)
        atomic_write_json(d / "metrics.json", {"n": 1})
    run.eval_dir_for("test", hub).mkdir(parents=True)  # begun, not finished
    (run.path / "eval" / "test").mkdir()
    assert run.other_evals("test") == [("news.v2-99999999", run.eval_dir_for("test", plain)),
                                       ("xsum-01234567", run.eval_dir_for("test", xsum))]
    assert run.other_evals("validation") == []
