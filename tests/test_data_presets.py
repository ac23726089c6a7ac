"""Dataset presets (`data.preset`, `--data-preset`): what they set, their precedence, a SAMSum-shaped
file trained and evaluated with `--data-preset samsum`, the offline message, and evaluations on
another dataset: kept beside the run's own (RUN/eval/on-<label>/), a file scored whole, labelled in
the report and the model card; an old run whose eval/test holds one still compares as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sumtune.cli import build_parser, main
from sumtune.config import (
    DATA_PRESETS,
    DECODING_PRESETS,
    DataConfig,
    build_config,
    load_run_config,
    save_config,
)
from sumtune.data import load_splits
from sumtune.errors import UserError
from sumtune.fingerprints import file_sha256
from sumtune.runs import RunDir

SHARED_XSUM = (Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum" / "test.jsonl").resolve()  # as sumtune names it (absolute, links resolved)

DIALOGUES = [
    ("Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!\r\nAmanda: I'll bring you tomorrow :-)",
     "Amanda baked cookies and will bring Jerry some tomorrow."),
    ("Olivia: Who are you voting for in this election?\r\nOliver: Liberals as always.\r\nOlivia: Me too!!",
     "Olivia and Oliver are voting for liberals in this election."),
    ("Tim: Hi, what's up?\r\nKim: Bad mood tbh, I was going to do lots of stuff but ended up procrastinating\r\n"
     "Tim: What did you plan on doing?\r\nKim: Oh you know, uni stuff and unfucking my room",
     "Kim may try the pomodoro technique recommended by Tim to get more stuff done."),
    ("Edward: Rachel, I think I'm in ove with Bella..\r\nRachel: Dont say anything else..\r\nEdward: What do you mean??",
     "Edward thinks he is in love with Bella. Rachel wants Edward to open his door."),
]


def _samsum_file(path, n: int = 24):
    """SAMSum's layout: id, dialogue (turns on lines, CRLF), summary."""
    rows = [{"id": f"1{i:07d}", "dialogue": DIALOGUES[i % 4][0] + f"\r\nAmanda: see you at {i}",
             "summary": DIALOGUES[i % 4][1]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _decoding(ev):
    return {k: getattr(ev, k) for k in DECODING_PRESETS["greedy"]}


def test_presets_set_columns_cleaning_decoding_and_a_default_source():
    for name, preset in DATA_PRESETS.items():
        cfg = build_config(flags={"data.preset": name})
        d = cfg.data
        assert (d.article_column, d.summary_column, d.id_column, d.clean) == (
            preset["article_column"], preset["summary_column"], preset["id_column"], preset["clean"])
        assert d.source == preset["source_default"] and d.source.startswith("hf:")
        assert cfg.eval.preset == preset["decoding"] and _decoding(cfg.eval) == DECODING_PRESETS[name]
    assert [DATA_PRESETS[n]["clean"] for n in ("cnndm", "xsum", "samsum")] == [True, False, False]
    assert (build_config().data.preset, build_config().data.clean) == ("none", True)


def test_precedence_defaults_preset_explicit_keys(tmp_path):
    # within one layer the preset goes first, whatever the order the keys are written in
    for flags in ({"data.preset": "xsum", "data.clean": True, "eval.num_beams": 2},
                  {"eval.num_beams": 2, "data.clean": True, "data.preset": "xsum"}):
        cfg = build_config(flags=flags)
        assert (cfg.data.article_column, cfg.data.clean, cfg.eval.num_beams, cfg.eval.max_new_tokens) == (
            "document", True, 2, 60)
    for sets in (["data.preset=samsum", "eval.preset=greedy"], ["eval.preset=greedy", "data.preset=samsum"]):
        cfg = build_config(sets=sets)
        assert cfg.eval.preset == "greedy" and cfg.data.article_column == "dialogue"
    # a source given anywhere is kept: the preset's is a default for an empty one only
    data = _samsum_file(tmp_path / "s.jsonl")
    assert build_config(flags={"data.source": str(data), "data.preset": "samsum"}).data.source == str(data)
    f = tmp_path / "c.yaml"
    f.write_text(f"data:\n  source: {data}\n  article_column: text\n")
    cfg = build_config(str(f), {"data.preset": "samsum"})  # a later layer's preset overrides earlier keys
    assert (cfg.data.source, cfg.data.article_column) == (str(data), "dialogue")
    assert build_config(str(f), sets=["data.preset=samsum", "data.article_column=chat"]).data.article_column == "chat"
    # a run's config.yaml gives back the same configuration
    cfg = build_config(flags={"data.preset": "xsum", "data.source": str(data), "eval.num_beams": 3})
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_run_config(tmp_path / "run") == cfg


def test_the_flag_on_every_command_that_reads_data():
    p = build_parser()
    for argv in (["train", "--method", "lora"], ["experiment"], ["plan"], ["evaluate", "RUN"]):
        assert p.parse_args([*argv, "--data-preset", "samsum"]).data_preset == "samsum"
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--method", "lora", "--data-preset", "cnn"])


def test_samsum_file_trains_and_evaluates_with_the_preset(tiny_gpt2, tmp_path):
    data = _samsum_file(tmp_path / "samsum.jsonl")
    run = tmp_path / "run"
    assert main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(data), "--data-preset", "samsum",
                 "--output-dir", str(run), "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1",
                 "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=48",
                 "--set", "method.r=4"]) == 0
    cfg = load_run_config(run)
    assert (cfg.data.preset, cfg.data.article_column, cfg.data.clean, cfg.eval.preset) == (
        "samsum", "dialogue", False, "samsum")
    test = load_splits(cfg.data, cfg.data.seed)["test"]
    by_id = {f"1{i:07d}": i for i in range(24)}
    for i, article in zip(test["id"], test["article"]):  # not CNN-cleaned: the turns keep their lines
        assert article == (DIALOGUES[by_id[i] % 4][0] + f"\r\nAmanda: see you at {by_id[i]}").strip()
    assert main(["evaluate", str(run), "--limit", "2", "--max-new-tokens", "6"]) == 0
    m = json.loads((run / "eval/test/metrics.json").read_text())
    assert m["n"] == 2 and m["decoding"]["preset"] == "samsum" and m["decoding"]["num_beams"] == 8
    assert m["dataset"] == {"source": str(data), "preset": "samsum", "sha256": file_sha256(data), "clean": False,
                            "columns": {"article": "dialogue", "summary": "summary", "id": "id"},
                            "is_training_data": True}
    # the run's own file given with --data is its own data: its test split carved as in training, in eval/test/
    assert main(["evaluate", str(run), "--data", str(data), "--limit", "2", "--max-new-tokens", "6"]) == 0
    m = json.loads((run / "eval/test/metrics.json").read_text())
    assert m["split_rows"] == 2 and "whole_file" not in m["dataset"] and RunDir(run).other_evals("test") == []


def test_a_preset_hub_source_offline_is_one_line(tiny_gpt2, tmp_path, capsys, monkeypatch):
    import sumtune.training.state as state

    monkeypatch.setattr(state, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc = main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data-preset", "xsum",
               "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "EdinburghNLP/xsum" in err and "--data DIR" in err


def test_evaluation_on_another_dataset_is_recorded_and_labelled_in_the_report(tiny_gpt2, kaggle_dir, tmp_path):
    """Train on CNN/DM-shaped data, evaluate one run on a SAMSum-shaped file too: metrics.json names
    that dataset and goes beside the run's own results, compare.md and report.html list it apart,
    labelled, and no pair crosses datasets. Then the same evaluation where an older sumtune put it,
    in eval/test/: compare labels the row's test data as it did."""
    samsum = _samsum_file(tmp_path / "samsum.jsonl")
    runs = []
    for method in ("zero_shot", "lora"):
        run = tmp_path / "exp" / method
        assert main(["train", "--method", method, "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
                     "--output-dir", str(run), "--max-steps", "1", "--batch-size", "4", "--grad-accum", "1",
                     "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=48",
                     "--set", "method.lora.r=4"]) == 0
        runs.append(run)
    common = ["--limit", "3", "--max-new-tokens", "6", "--decoding", "greedy"]
    assert main(["evaluate", str(runs[0]), *common]) == 0
    assert main(["evaluate", str(runs[1]), "--data", str(samsum), "--data-preset", "samsum", *common]) == 0
    own = json.loads((runs[0] / "eval/test/metrics.json").read_text())
    assert not (runs[1] / "eval/test").exists()  # other data never lands in the run's own eval/test/
    [(label, where)] = RunDir(runs[1]).other_evals("test")
    assert label == f"samsum-{file_sha256(samsum)[:8]}" and where == runs[1] / "eval" / f"on-{label}" / "test"
    other = json.loads((where / "metrics.json").read_text())
    assert own["dataset"]["is_training_data"] is True and own["dataset"]["preset"] == "none"
    assert other["dataset"]["is_training_data"] is False and other["data_is_training_data"] is False
    assert (other["dataset"]["source"], other["dataset"]["preset"], other["dataset"]["sha256"]) == (
        str(samsum), "samsum", file_sha256(samsum))
    assert other["dataset"]["whole_file"] is True and other["split_rows"] == 24 and other["n"] == 3  # not carved
    assert other["decoding"]["preset"] == "greedy"  # --decoding over the preset's decoding
    preds = [json.loads(line) for line in (where / "predictions.jsonl").read_text().splitlines()]
    assert all(p["article"].startswith(tuple(d for d, _ in DIALOGUES)) for p in preds)

    data = f"samsum: {samsum} (sha256 {file_sha256(samsum)[:12]})"
    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    scores = md.split("## Scores on the test split")[1].split("## ")[0]
    assert any(line.startswith("| lora | - | - | not evaluated |") for line in scores.splitlines())
    assert "not its training data" not in scores and "**Test data:**" not in md and "**Other data:**" in md
    section = md.split("## Evaluations on other data (test split)")[1].split("\n## ")[0]
    assert f"| lora | {data} (the whole file) | {label} | 3 of 24 | greedy* |" in section  # * max_new_tokens set
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(o["run"], o["label"], o["n"]) for o in report["other_data"]] == [("lora", label, 3)]
    assert report["pairs"] == []
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert 'id="other-data"' in html and label in html and file_sha256(samsum)[:12] in html

    # an older run directory: its eval/test/ holds the evaluation on other data
    (runs[1] / "eval" / "test").mkdir()
    for f in ("metrics.json", "predictions.jsonl"):
        shutil.move(where / f, runs[1] / "eval" / "test" / f)
    shutil.rmtree(where.parent)
    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cmp-old")]) == 0
    md = (tmp_path / "cmp-old" / "compare.md").read_text()
    score_rows = [line for line in md.splitlines() if line.startswith("| lora |") and "not evaluated" not in line]
    assert any(f"{data} (not its training data)" in line for line in score_rows)
    assert any(line.startswith("| zero_shot | its training data |") for line in md.splitlines())
    assert "**Test data:**" in md and "## Evaluations on other data" not in md
    report = json.loads((tmp_path / "cmp-old" / "compare.json").read_text())
    assert report["pairs"] == [] and report["other_data"] == []  # no document in common
    html = (tmp_path / "cmp-old" / "report.html").read_text()
    assert "not its training data" in html and file_sha256(samsum)[:12] in html


def _xsum_file(tmp_path) -> Path:
    """../shared/data/xsum/test.jsonl where present (500 rows), else a small file of its shape."""
    if SHARED_XSUM.is_file():
        return SHARED_XSUM
    from sumtune.tiny import synthetic_news

    rows = [{"id": f"xsum-test-{i:04d}", "document": r["article"], "summary": r["highlights"].split("\n")[0]}
            for i, r in enumerate(synthetic_news(40, seed=5))]
    path = tmp_path / "xsum" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evaluating_on_xsum_leaves_the_runs_own_test_results_and_adds_a_labelled_one(tiny_gpt2, kaggle_dir,
                                                                                     tmp_path, capsys):
    """The issue's case: `evaluate RUN --data xsum/test.jsonl --data-preset xsum --limit 4` after the run's
    own test evaluation. eval/test/ stays byte for byte; the XSum result goes beside it, the whole file
    as the test split (not its 80/10/10 test tenth); compare and the exported card show both, labelled."""
    from sumtune.export import export_run
    from sumtune.recipes.evaluate import _split_rows
    from sumtune.runs import with_overrides

    xsum = _xsum_file(tmp_path)
    rows = [json.loads(line) for line in xsum.read_text(encoding="utf-8").splitlines() if line.strip()]
    run = tmp_path / "run"
    assert main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
                 "--output-dir", str(run), "--max-steps", "1", "--batch-size", "4", "--grad-accum", "1",
                 "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=48",
                 "--set", "method.r=4"]) == 0
    fast = ["--max-new-tokens", "6", "--decoding", "greedy"]
    assert main(["evaluate", str(run), *fast]) == 0
    own = {f: (run / "eval/test" / f).read_bytes() for f in ("metrics.json", "predictions.jsonl")}
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(xsum), "--data-preset", "xsum", "--limit", "4", *fast]) == 0
    out = capsys.readouterr().out
    assert f"all {len(rows)} rows of {xsum} as the test split" in out and "left as they were" in out
    assert {f: (run / "eval/test" / f).read_bytes() for f in own} == own  # unchanged
    label = f"xsum-{file_sha256(xsum)[:8]}"
    assert RunDir(run).other_evals("test") == [(label, run / "eval" / f"on-{label}" / "test")]
    m = json.loads((run / "eval" / f"on-{label}" / "test" / "metrics.json").read_text())
    assert (m["n"], m["split_rows"], m["dataset"]["preset"], m["dataset"]["whole_file"]) == (4, len(rows), "xsum", True)
    # without --limit every row of the file is scored (counted by the loader, not decoded)
    cfg = with_overrides(load_run_config(run), None, str(xsum), "xsum")
    assert len(_split_rows(cfg, "test", None, whole_file=True)) == len(rows)

    assert main(["compare", str(run), "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    n_own = json.loads(own["metrics.json"])["n"]
    assert f"| run | {n_own} | greedy* |" in md.split("## Scores on the test split")[1]  # the headline: its own
    assert f"| run | xsum: {xsum} (sha256 {file_sha256(xsum)[:12]}) (the whole file) | {label} | 4 of {len(rows):,} |" in md

    export_run(run, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    evaluation = card.split("## Evaluation")[1]
    assert f"Test split, n = {n_own}" in evaluation and "### On other data" in evaluation
    assert evaluation.index(f"Test split, n = {n_own}") < evaluation.index(f"`{label}` | 4 of {len(rows)}")


def test_a_directory_needs_only_the_split_read_and_messages_name_the_preset(tmp_path, kaggle_dir):
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    shutil.copy(kaggle_dir / "test.csv", only_test / "test.csv")
    cfg = DataConfig(source=str(only_test))
    assert len(load_splits(cfg, 0, only="test")["test"]) == 8
    with pytest.raises(UserError, match="missing train.csv, validation.csv"):
        load_splits(cfg, 0)  # training still needs every split
    for source, split in ((tmp_path / "empty", "test"), (only_test, "validation")):
        source.mkdir(exist_ok=True)
        with pytest.raises(UserError) as e:
            load_splits(DataConfig(source=str(source), preset="samsum"), 0, only=split)
        msg = str(e.value)
        assert f"a samsum directory with {split}.csv" in msg and "Kaggle" not in msg and "\n" not in msg
    with pytest.raises(UserError, match="an xsum directory has train.csv"):
        load_splits(DataConfig(source=str(tmp_path / "empty"), preset="xsum"), 0)
    with pytest.raises(UserError, match="does not exist.*a samsum directory"):
        load_splits(DataConfig(source=str(tmp_path / "nowhere"), preset="samsum"), 0)


def test_experiment_decodes_with_the_datasets_preset_unless_told(tiny_gpt2, tmp_path):
    from sumtune.cli import _experiment_setup

    data = _samsum_file(tmp_path / "s.jsonl")
    base = ["experiment", "--model", str(tiny_gpt2), "--data", str(data)]

    def preset(*extra: str) -> str:
        return _experiment_setup(build_parser().parse_args([*base, *extra]))[0].eval.preset

    assert preset() == "cnndm"  # as before: the CNN/DM recipe's decoding
    assert preset("--data-preset", "samsum") == "samsum"
    assert preset("--data-preset", "xsum", "--decoding", "greedy") == "greedy"
