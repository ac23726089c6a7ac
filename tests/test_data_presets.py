"""Dataset presets (`data.preset`, `--data-preset`): what they set, their precedence, a SAMSum-shaped
file trained and evaluated with `--data-preset samsum`, the offline message, and an evaluation on
another dataset labelled in the report."""

from __future__ import annotations

import json

import pytest

from sumtune.cli import build_parser, main
from sumtune.config import DATA_PRESETS, DECODING_PRESETS, build_config, load_run_config, save_config
from sumtune.data import load_splits
from sumtune.fingerprints import file_sha256

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
    that dataset, compare.md and report.html label the row, and no pair crosses datasets."""
    samsum = _samsum_file(tmp_path / "samsum.jsonl")
    runs = []
    for method in ("zero_shot", "lora"):
        run = tmp_path / "exp" / method
        assert main(["train", "--method", method, "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
                     "--output-dir", str(run), "--max-steps", "1", "--batch-size", "4", "--grad-accum", "1",
                     "--max-length", "192", "--precision", "fp32", "--set", "data.max_summary_length=48",
                     "--set", "method.r=4"]) == 0
        runs.append(run)
    common = ["--limit", "3", "--max-new-tokens", "6", "--decoding", "greedy"]
    assert main(["evaluate", str(runs[0]), *common]) == 0
    assert main(["evaluate", str(runs[1]), "--data", str(samsum), "--data-preset", "samsum", *common]) == 0
    own = json.loads((runs[0] / "eval/test/metrics.json").read_text())
    other = json.loads((runs[1] / "eval/test/metrics.json").read_text())
    assert own["dataset"]["is_training_data"] is True and own["dataset"]["preset"] == "none"
    assert other["dataset"]["is_training_data"] is False and other["data_is_training_data"] is False
    assert (other["dataset"]["source"], other["dataset"]["preset"], other["dataset"]["sha256"]) == (
        str(samsum), "samsum", file_sha256(samsum))
    assert other["decoding"]["preset"] == "greedy"  # --decoding over the preset's decoding
    preds = [json.loads(line) for line in (runs[1] / "eval/test/predictions.jsonl").read_text().splitlines()]
    assert all(p["article"].startswith(tuple(d for d, _ in DIALOGUES)) for p in preds)

    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    label = f"samsum: {samsum} (sha256 {file_sha256(samsum)[:12]}) (not its training data)"
    score_rows = [line for line in md.splitlines() if line.startswith("| lora |") and "not evaluated" not in line]
    assert any(label in line for line in score_rows)
    assert any(line.startswith("| zero_shot | its training data |") for line in md.splitlines())
    assert "**Test data:**" in md
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["pairs"] == []  # zero_shot's CNN/DM rows and lora's SAMSum rows have no document in common
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "not its training data" in html and file_sha256(samsum)[:12] in html


def test_experiment_decodes_with_the_datasets_preset_unless_told(tiny_gpt2, tmp_path):
    from sumtune.cli import _experiment_setup

    data = _samsum_file(tmp_path / "s.jsonl")
    base = ["experiment", "--model", str(tiny_gpt2), "--data", str(data)]

    def preset(*extra: str) -> str:
        return _experiment_setup(build_parser().parse_args([*base, *extra]))[0].eval.preset

    assert preset() == "cnndm"  # as before: the CNN/DM recipe's decoding
    assert preset("--data-preset", "samsum") == "samsum"
    assert preset("--data-preset", "xsum", "--decoding", "greedy") == "greedy"
