"""BERTScore (`eval.metrics: [rouge, bertscore]`): per-document P/R/F1 against the bert-score package's own
`score` on a tiny local RoBERTa, one-line errors before any decoding, and an evaluation + comparison whose
metrics.json, compare.md/json and report.html carry BERTScore with its intervals and model."""

from __future__ import annotations

import json
import sys

import bert_score
import pytest
import torch
from method_utils import make_run

from sumtune.bertscore import BERTSCORE_KEYS, bertscore_per_example, covers, load_scorer, record
from sumtune.bootstrap import bootstrap_ci, paired_bootstrap
from sumtune.cli import main
from sumtune.config import Config, EvalConfig, build_config, set_key
from sumtune.errors import UserError
from sumtune.io import atomic_write_json
from sumtune.recipes import evaluate as evaluate_mod
from sumtune.recipes import experiment
from sumtune.recipes.evaluate import evaluate_run
from sumtune.report import compare_runs
from sumtune.tiny import build_tiny_encoder, synthetic_news

CANDS = ["The mayor in Boston announced a new plan to repair roads.", "Residents welcomed the news.",
         "A storm is coming, officials in Denver warned.", "The budget for the project is $4 million."]
REFS = ["The mayor in Boston announced a plan to repair roads .\nCritics argued the cost was too high.",
        "Residents said they welcomed the news.", "State officials in Denver warned residents about a storm.",
        "A team of scientists unveiled a study on air quality."]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    texts = [r["article"] + "\n" + r["highlights"] for r in synthetic_news(120, seed=3)]
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_roberta"), texts, layers=3)


def _ev(encoder, layers=2, **keys) -> EvalConfig:
    return EvalConfig(metrics=["rouge", "bertscore"], bertscore_model=str(encoder), bertscore_layers=layers, **keys)


def _reference(cands, refs, encoder, layers):
    """bert-score's own result (P, R, F1 lists), as a user of the package would call it."""
    p, r, f = bert_score.score(list(cands), list(refs), model_type=str(encoder), num_layers=layers)
    return [x.tolist() for x in (p, r, f)]


def test_per_document_scores_are_bert_scores_own(encoder):
    for layers in (1, 2, 3):
        scorer = load_scorer(_ev(encoder, layers))
        ours = bertscore_per_example(scorer, CANDS, REFS)
        assert [ours[k] for k in BERTSCORE_KEYS] == _reference(CANDS, REFS, encoder, layers)  # same calls: exact
        assert record(scorer) | {"hash": None} == {
            "model": str(encoder), "num_layers": layers, "rescaled_with_baseline": False, "baseline_lang": None,
            "idf": False, "package": f"bert-score {bert_score.__version__}", "hash": None}
    # the layer is what bert-score scores: another layer, other values (random weights differ per layer)
    assert _reference(CANDS, REFS, encoder, 1)[2] != _reference(CANDS, REFS, encoder, 3)[2]


def test_a_blank_text_scores_zero_and_the_others_stay_bert_scores(encoder):
    cands, refs = [CANDS[0], "  ", CANDS[2], CANDS[3]], [REFS[0], REFS[1], REFS[2], ""]
    ours = bertscore_per_example(load_scorer(_ev(encoder)), cands, refs)
    expected = _reference([cands[0], cands[2]], [refs[0], refs[2]], encoder, 2)
    for n, key in enumerate(BERTSCORE_KEYS):
        assert ours[key][1] == ours[key][3] == 0.0  # bert-score's documented raw score of a blank text
        assert [ours[key][0], ours[key][2]] == pytest.approx(expected[n], abs=1e-6)


def test_rescaled_scores_are_bert_scores_own(encoder, tmp_path):
    """Rescaling with a baseline file, through bert-score's own scorer (sumtune's config takes bert-score's
    shipped baselines, which a local model has none of); a blank text rescales as bert-score rescales a 0."""
    baseline = tmp_path / "baseline.tsv"
    rows = [f"{layer},0.{layer + 1},0.{layer + 2},0.{layer + 3}" for layer in range(4)]
    baseline.write_text("LAYER,P,R,F\n" + "\n".join(rows) + "\n")
    scorer = bert_score.BERTScorer(model_type=str(encoder), num_layers=2, lang="en", rescale_with_baseline=True,
                                   baseline_path=str(baseline))
    ours = bertscore_per_example(scorer, CANDS[:2] + [""], REFS[:3])
    p, r, f = bert_score.score(CANDS[:2], REFS[:2], model_type=str(encoder), num_layers=2, lang="en",
                               rescale_with_baseline=True, baseline_path=str(baseline))
    for n, (key, ref) in enumerate(zip(BERTSCORE_KEYS, (p, r, f))):
        assert ours[key][:2] == ref.tolist()
        b = torch.tensor([0.3, 0.4, 0.5])[n]  # layer 2's row
        assert ours[key][2] == pytest.approx(float((0 - b) / (1 - b)))


def test_missing_package_model_layer_or_baseline_is_one_line(encoder, tmp_path, monkeypatch):
    def err(ev) -> str:
        with pytest.raises(UserError) as e:
            load_scorer(ev)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no tuned layer" in err(_ev(encoder, layers=None))
    assert "eval.bertscore_layers" in err(_ev(encoder, layers=9))  # the model has 3
    assert "no English baseline" in err(_ev(encoder, bertscore_rescale=True))
    assert "no config.json" in err(EvalConfig(metrics=["rouge", "bertscore"], bertscore_model=str(tmp_path)))
    no_weights = tmp_path / "bin_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((encoder / "config.json").read_text())
    assert ".safetensors" in err(EvalConfig(metrics=["rouge", "bertscore"], bertscore_model=str(no_weights),
                                            bertscore_layers=1))
    # the default (roberta-large) is not in this machine's cache and the tests are offline
    assert "sumtune download model roberta-large" in err(EvalConfig(metrics=["rouge", "bertscore"]))
    monkeypatch.setitem(sys.modules, "bert_score", None)  # import fails as if not installed
    assert ".[bertscore]" in err(_ev(encoder))


def test_metrics_key_is_validated(tmp_path, capsys):
    cfg = build_config(sets=["eval.metrics=[rouge,bertscore]"])
    assert cfg.eval.metrics == ["rouge", "bertscore"] and Config().eval.metrics == ["rouge"]
    for bad in ("[bertscore]", "[rouge,bleu]"):
        with pytest.raises(UserError, match="eval.metrics"):
            build_config(sets=[f"eval.metrics={bad}"])
    set_key(cfg, "eval.bertscore_layers", "null", text=True)
    assert cfg.eval.bertscore_layers is None
    assert main(["evaluate", str(tmp_path), "--set", "train.lr=1"]) == 2  # evaluate's --set: eval.* only
    err = capsys.readouterr().err.strip()
    assert "eval.* keys" in err and "\n" not in err


def test_an_earlier_evaluation_is_reused_only_with_the_bertscore_asked_for(encoder):
    rec = record(load_scorer(_ev(encoder)))
    assert covers(EvalConfig(), None) and covers(_ev(encoder), rec)
    assert not covers(_ev(encoder), None) and not covers(_ev(encoder, layers=3), rec)
    assert not covers(_ev(encoder, bertscore_rescale=True), rec)


def test_experiment_refuses_an_unavailable_model_before_training(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    def trained(*_a, **_k):
        raise AssertionError("training started before the BERTScore check")

    monkeypatch.setattr(experiment, "_train", trained)
    cfg = build_config(flags={"model.name": str(tiny_neo), "data.source": str(kaggle_dir),
                              "output_dir": str(tmp_path / "exp")}, sets=["eval.metrics=[rouge,bertscore]"])
    with pytest.raises(UserError, match="roberta-large"):
        experiment.run_experiment(cfg, experiment.Plan())


def _finished_run(tmp_path, model_dir, data_dir, method, name):
    torch.manual_seed(0)
    run, *_ = make_run(tmp_path / name, model_dir, method,
                       sets=(f"data.source={data_dir}", "train.precision=fp32", "method.lora.r=4"))
    atomic_write_json(run / "results.json", {"method": method, "finished": True, "train_seconds": 1.0,
                                             "trainable_params": 10, "total_params": 100})
    return run


def _rows(run):
    return [json.loads(x) for x in (run / "eval/test/predictions.jsonl").read_text().splitlines()]


def test_an_unavailable_model_fails_before_the_run_loads(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    run = _finished_run(tmp_path, tiny_neo, kaggle_dir, "lora", "run")

    def loaded(*_a, **_k):
        raise AssertionError("the run's model was loaded before the BERTScore check")

    monkeypatch.setattr(evaluate_mod, "_model", loaded)
    with pytest.raises(UserError, match="roberta-large"):
        evaluate_run(run, "test", overrides={"metrics": ["rouge", "bertscore"]})
    assert not (run / "eval/test/metrics.json").exists()


def test_evaluate_and_compare_report_bertscore_with_intervals(tiny_neo, kaggle_dir, tmp_path, encoder, capsys):
    runs = [_finished_run(tmp_path, tiny_neo, kaggle_dir, "zero_shot", "zero_shot"),
            _finished_run(tmp_path, tiny_neo, kaggle_dir, "lora", "lora")]
    fast = ["--max-new-tokens", "12", "--batch-size", "4"]
    bert = ["--set", "eval.metrics=[rouge,bertscore]", "--set", f"eval.bertscore_model={encoder}",
            "--set", "eval.bertscore_layers=2"]
    for run in runs:
        assert main(["evaluate", str(run), *fast, *bert]) == 0
    assert "bertscore_f1" in capsys.readouterr().out

    per = {}
    for run in runs:
        m, rows = json.loads((run / "eval/test/metrics.json").read_text()), _rows(run)
        assert m["n"] == len(rows) == 8
        preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
        scored = [i for i, p in enumerate(preds) if p.strip()]
        expected = _reference([preds[i] for i in scored], [refs[i] for i in scored], encoder, 2)
        for n, key in enumerate(BERTSCORE_KEYS):
            values = [r[key] for r in rows]
            assert [values[i] for i in scored] == pytest.approx(expected[n], abs=1e-6)
            assert all(values[i] == 0.0 for i in range(len(rows)) if i not in scored)
            assert m[key] == pytest.approx(sum(values) / len(values), abs=1e-12)
            assert m["ci95"][key] == list(bootstrap_ci(values, 1000, 42))  # the run's seed, as ROUGE's
            assert m["ci95"][key][0] <= m[key] <= m["ci95"][key][1]
        assert m["bertscore"]["model"] == str(encoder) and m["bertscore"]["num_layers"] == 2
        assert m["bertscore"]["rescaled_with_baseline"] is False and m["bertscore"]["seconds"] > 0
        assert "rouge1" in m["ci95"]
        per[run.name] = {r["id"]: r["bertscore_f1"] for r in rows}

    report = compare_runs(runs, tmp_path / "cmp")
    md = (tmp_path / "cmp/compare.md").read_text()
    assert "| BERTScore P | BERTScore R | BERTScore F1 |" in md
    lora = next(r for r in report["rows"] if r["method"] == "lora")
    low, high = lora["ci95"]["bertscore_f1"]
    assert f"{100 * lora['bertscore_f1']:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in md
    assert f"bert-score, {encoder}, layer 2, not rescaled" in md
    (pair,) = report["pairs"]
    ids = sorted(per["zero_shot"])
    a, b = ([per[pair[x]][i] for i in ids] for x in ("a", "b"))
    assert pair["bertscore_f1"] | {"p_holm": 0, "significant": 0} == paired_bootstrap(a, b, 1000, 0) | {
        "p_holm": 0, "significant": 0}
    assert pair["bertscore_f1"]["p_holm"] == pair["bertscore_f1"]["p_value"]  # one pair: Holm changes nothing
    assert "ROUGE and BERTScore points" in md and md.count("BERTScore F1") >= 2  # scores and pairs tables
    assert json.loads((tmp_path / "cmp/compare.json").read_text())["pairs"][0]["bertscore_f1"] == pair["bertscore_f1"]
    assert "ROUGE-L" in " ".join(report["answer"]["paragraphs"])  # the answer stays ROUGE-based and says so

    html = (tmp_path / "cmp/report.html").read_text()
    assert 'data-key="bertscore_f1"' in html and f"{encoder}, layer 2" in html
    assert '"bertscore_f1": ' in html  # the article browser's per-article scores
    assert f"{100 * lora['bertscore_f1']:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in html
