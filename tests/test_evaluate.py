"""`evaluate` and `summarize`: metrics.json against rouge-score recomputed from predictions.jsonl,
the loss against the model's own per-example loss, summarize for every method, and bad input."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import torch
from datasets import DatasetDict
from method_utils import make_run
from rouge_score import rouge_scorer

from sumtune.cli import main
from sumtune.config import load_run_config
from sumtune.data import load_splits, tokenize_splits
from sumtune.io import atomic_write_json
from sumtune.recipes.evaluate import evaluate_run, summarize_file
from sumtune.sentences import split_sentences

FAST = {"max_new_tokens": 12, "batch_size": 4}


def _finished_run(tmp_path, model_dir, data_dir, method="lora", name="run"):
    """A run directory as the trainer leaves it (config, adapter, results.json finished).

    fp32: `precision: auto` is bf16 on a CPU with AVX512-BF16/AMX, and evaluate then scores the
    loss under bf16 autocast, off the fp32 per-example loss by ~1e-5 relative (1.2e-5 for some
    random LoRA initialisations: over this file's 1e-5 check), and a row's greedy summary could
    depend on its batch-mates; in fp32 the two losses agree to ~1e-7. Seeded: the initialisation
    does not depend on what ran before in this process (an in-process `train` seeds torch's global
    RNG, later tests advance it)."""
    torch.manual_seed(0)
    run, cfg, model, tok = make_run(tmp_path / name, model_dir, method,
                                    sets=(f"data.source={data_dir}", "train.precision=fp32", "method.prompt_tuning.n_tokens=4",
                                          "method.lora.r=4"))
    atomic_write_json(run / "results.json", {"method": method, "finished": True})
    return run, model, tok


def _test_rows(data_dir):
    with open(data_dir / "test.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_metrics_equal_rouge_score_recomputed_and_loss_is_token_weighted(tiny_neo, kaggle_dir, tmp_path, capsys):
    run, model, tok = _finished_run(tmp_path, tiny_neo, kaggle_dir)
    metrics = evaluate_run(run, "test", limit=None, overrides=FAST)
    assert "rouge1" in capsys.readouterr().out

    saved = json.loads((run / "eval/test/metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    preds = [json.loads(line) for line in (run / "eval/test/predictions.jsonl").read_text().splitlines()]
    rows = _test_rows(kaggle_dir)
    assert saved["n"] == len(preds) == len(rows)
    assert sorted(p["id"] for p in preds) == sorted(r["id"] for r in rows)
    assert any(p["prediction"] for p in preds)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(p["reference"], p["prediction"]) for p in preds]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert saved[key] == pytest.approx(sum(s[key].fmeasure for s in scores) / len(scores), abs=1e-12)
        assert 0 <= saved[key] <= 1
    # Lsum: rouge-score's on both texts split into sentences, one per line
    split = [scorer.score("\n".join(split_sentences(p["reference"])), "\n".join(split_sentences(p["prediction"])))
             for p in preds]
    assert saved["rougeLsum"] == pytest.approx(sum(s["rougeLsum"].fmeasure for s in split) / len(split), abs=1e-12)
    assert saved["decoding"]["max_new_tokens"] == 12 and saved["summaries_per_s"] > 0

    # the loss: every example alone through the model's own (mean) loss, weighted by its summary tokens
    cfg = load_run_config(run)
    cleaned = load_splits(cfg.data, cfg.data.seed)["test"]
    assert {p["id"]: p["article"] for p in preds} == dict(zip(cleaned["id"], cleaned["article"]))  # for report.html
    test = tokenize_splits(DatasetDict(test=cleaned), tok, cfg.data)["test"]
    total = tokens = 0.0
    with torch.no_grad():
        for ex in test:
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            tokens += n
    assert saved["loss"] == pytest.approx(total / tokens, rel=1e-5)


def test_limit_and_validation_split(tiny_neo, kaggle_dir, tmp_path):
    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir)
    metrics = evaluate_run(run, "validation", limit=3, overrides=FAST)
    assert metrics["n"] == 3 and metrics["limit"] == 3
    assert len((run / "eval/validation/predictions.jsonl").read_text().splitlines()) == 3


def test_summarize_matches_the_evaluation_prediction(tiny_neo, kaggle_dir, tmp_path):
    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir, method="prompt_tuning")
    evaluate_run(run, "test", limit=None, overrides=FAST)
    preds = {json.loads(x)["id"]: json.loads(x)["prediction"]
             for x in (run / "eval/test/predictions.jsonl").read_text().splitlines()}
    row = _test_rows(kaggle_dir)[0]
    article = tmp_path / "article.txt"
    article.write_text(row["article"], encoding="utf-8")
    assert summarize_file(run, str(article), overrides=FAST) == preds[row["id"]]


@pytest.mark.parametrize("method", ["zero_shot", "prompt_tuning", "lora", "last_layers", "full"])
def test_summarize_cli_every_method(method, tiny_neo, kaggle_dir, tmp_path, monkeypatch, capsys):
    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir, method=method)
    monkeypatch.setattr("sys.stdin", io.StringIO(_test_rows(kaggle_dir)[1]["article"]))
    assert main(["summarize", str(run), "-", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and "\n\n" not in out.strip()


def _one_line_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sumtune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input(tiny_neo, kaggle_dir, tmp_path, capsys, monkeypatch):
    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir)
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")

    assert "not a sumtune run" in _one_line_error(["evaluate", str(tmp_path)], capsys)
    assert "not a sumtune run" in _one_line_error(["compare", str(tmp_path)], capsys)
    assert "empty input" in _one_line_error(["summarize", str(run), str(tmp_path / "empty.txt")], capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert "empty input" in _one_line_error(["summarize", str(run)], capsys)

    atomic_write_json(run / "results.json", {"method": "lora"})  # killed before the end
    for cmd in (["evaluate", str(run)], ["summarize", str(run), str(tmp_path / "empty.txt")], ["compare", str(run)]):
        err = _one_line_error(cmd, capsys)
        assert "unfinished" in err and "--resume" in err

    atomic_write_json(run / "results.json", {"method": "lora", "finished": True})
    shutil.rmtree(run / "adapter")
    for cmd in (["evaluate", str(run)], ["compare", str(run)]):
        assert "no weights" in _one_line_error(cmd, capsys)

    run2, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir, name="run2")
    (kaggle_dir / "test.csv").unlink()  # the data no longer has a test split
    assert "test.csv" in _one_line_error(["evaluate", str(run2), "--split", "test"], capsys)


def test_data_dir_with_only_the_split_evaluated(tiny_neo, kaggle_dir, tmp_path, capsys):
    """`evaluate --data DIR` reads only DIR/<split>.csv; a missing one is one line naming the preset."""
    from sumtune.fingerprints import file_sha256
    from sumtune.runs import RunDir

    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir)
    only = tmp_path / "only_test"
    only.mkdir()
    shutil.copy(kaggle_dir / "test.csv", only / "test.csv")
    assert main(["evaluate", str(run), "--data", str(only), "--limit", "2", "--max-new-tokens", "4"]) == 0
    [(label, where)] = RunDir(run).other_evals("test")  # other content (one file of three): beside the run's own
    assert label.startswith("only_test-") and not (run / "eval" / "test").exists()
    m = json.loads((where / "metrics.json").read_text())
    assert m["n"] == 2 and m["split_rows"] == 8 and m["dataset"]["sha256"] and "whole_file" not in m["dataset"]
    assert file_sha256(only / "test.csv") == file_sha256(kaggle_dir / "test.csv")
    err = _one_line_error(["evaluate", str(run), "--data", str(only), "--split", "validation"], capsys)
    assert "validation.csv" in err and "train.csv" not in err
    err = _one_line_error(["evaluate", str(run), "--data", str(tmp_path / "nothing_here"), "--data-preset", "samsum"],
                          capsys)
    assert "samsum" in err and "Kaggle" not in err


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapters_are_merged_for_evaluation_with_the_same_outputs(method, tiny_neo, kaggle_dir, tmp_path):
    """evaluate decodes an adapter merged into the base weights (a plain model: no extra matmuls per
    step); its logits equal the unmerged PEFT model's up to rounding, and so do its summaries."""
    from peft import PeftModel

    from sumtune.data import encode_prompts
    from sumtune.decoding import Generator
    from sumtune.modeling import load_model
    from sumtune.recipes.evaluate import _model
    from sumtune.runs import load_run

    run, _, _ = _finished_run(tmp_path, tiny_neo, kaggle_dir, method=method)
    cfg = load_run_config(run)
    cfg.eval.max_new_tokens, cfg.eval.batch_size = 12, 4
    merged, tokenizer, autocast = _model(run, cfg, device=torch.device("cpu"))
    _cfg, _m, unmerged, _tok = load_run(run)
    assert not isinstance(merged, PeftModel) and isinstance(unmerged, PeftModel)
    prompts = encode_prompts(tokenizer, [r["article"] for r in _test_rows(kaggle_dir)[:4]], cfg.data)
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        base = load_model(str(tiny_neo)).eval()(input_ids=ids).logits
        assert not torch.allclose(merged(input_ids=ids).logits, base, atol=1e-4)  # the adapter is in the weights
    assert (Generator(merged, tokenizer, cfg.eval, autocast=autocast).generate(prompts)
            == Generator(unmerged, tokenizer, cfg.eval, autocast=autocast).generate(prompts))


@pytest.mark.parametrize("arch", ["gpt_neo", "llama"])
def test_the_summary_loss_at_the_labels_only_equals_the_full_logits_loss(arch, tiny_family):
    """evaluate's loss pass with the label_loss fast path (the head at summary positions only, so a large
    eval.batch_size holds no [rows, length, vocab] logits) equals the full-logits reference; a batch whose
    rows have no summary token left counts nothing."""
    from datasets import Dataset

    from sumtune.modeling import load_model
    from sumtune.recipes.evaluate import summary_loss

    model = load_model(str(tiny_family(arch))).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, k in [(40, 9), (23, 5), (31, 0), (12, 3), (37, 12)]:  # (length, summary tokens); one row has none
        ids = torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n - k) + ids[n - k:]})
    ds = Dataset.from_list(rows)
    for batch in (1, 2, 5):
        fast = summary_loss(model, ds, 0, batch, None, fast=True)
        assert fast == pytest.approx(summary_loss(model, ds, 0, batch, None, fast=False), rel=1e-5)
        assert fast == pytest.approx(summary_loss(model, ds, 0, batch, None, fast=["label_loss"]), rel=0)
