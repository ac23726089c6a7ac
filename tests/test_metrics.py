"""ROUGE against hand-checkable cases and rouge-score itself; the token-weighted loss against
one large batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from sumtune.metrics import rouge, rouge_per_example, summed_token_loss


def test_rouge_identical_and_disjoint():
    assert rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0})
    assert rouge(["dogs bark loudly"], ["the cat sat"]) == pytest.approx(
        {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0})
    assert rouge([""], ["the cat sat"])["rouge1"] == 0.0


def test_rouge_stems_and_is_a_mean_over_examples():
    # "running"/"runs" share the stem "run": unigram F1 = 1 with stemming
    assert rouge(["he runs"], ["he running"])["rouge1"] == pytest.approx(1.0)
    preds, refs = ["a b c d", "x y"], ["a b c d", "x z w v"]
    # example F1s: 1.0 and 2*(1/2*1/4)/(1/2+1/4) = 1/3 -> mean 2/3 (a corpus-level sum would differ)
    assert rouge(preds, refs)["rouge1"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_rouge_lsum_uses_newline_sentences():
    ref = "the mayor approved the plan\nresidents welcomed it"
    pred = "residents welcomed it\nthe mayor approved the plan"
    scores = rouge([pred], [ref])
    assert scores["rougeLsum"] == pytest.approx(1.0)  # each sentence matched on its own
    assert scores["rougeL"] < 1.0  # one long sequence: the swapped order breaks the LCS
    expected = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True).score(ref, pred)
    assert scores["rougeL"] == pytest.approx(expected["rougeL"].fmeasure)


def test_rouge_length_mismatch():
    with pytest.raises(ValueError):
        rouge(["a"], ["a", "b"])


def test_token_weighted_loss_equals_one_large_batch():
    torch.manual_seed(0)
    logits = torch.randn(5, 9, 11)
    labels = torch.randint(0, 11, (5, 9))
    labels[:, :3] = -100  # the prompt
    labels[0, 5:] = -100  # short summaries: uneven token counts per row
    labels[3, 7:] = -100
    parts = [summed_token_loss(logits[rows], labels[rows]) for rows in ([0, 1], [2], [3, 4])]  # uneven batches
    total, tokens = sum(float(s) for s, _ in parts), sum(n for _, n in parts)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert total / tokens == pytest.approx(float(expected), rel=1e-6)
    assert tokens == int((labels[:, 1:] != -100).sum())


def test_rouge_lsum_splits_sentences_and_others_are_raw_rouge_score():
    pred = "Mr. Smith said the U.S. plan failed. Residents were angry. The mayor resigned on Jan. 5."
    ref = "The mayor resigned.\nResidents were angry at the plan."
    scores = rouge([pred], [ref])
    split_pred = "Mr. Smith said the U.S. plan failed.\nResidents were angry.\nThe mayor resigned on Jan. 5."
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    on_split, on_raw = scorer.score(ref, split_pred), scorer.score(ref, pred)
    assert scores["rougeLsum"] == pytest.approx(on_split["rougeLsum"].fmeasure)
    assert scores["rougeLsum"] != pytest.approx(on_raw["rougeLsum"].fmeasure)  # splitting matters here
    for k in keys[:3]:
        assert scores[k] == pytest.approx(on_raw[k].fmeasure)


def test_rouge_is_the_mean_of_rouge_per_example():
    preds = ["The cat sat. It purred.", "dogs bark", "a b c"]
    refs = ["The cat sat on the mat.\nIt purred loudly.", "the dog barks", "x y z"]
    per = rouge_per_example(preds, refs)
    assert set(per) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(len(v) == 3 for v in per.values())
    assert per["rouge1"][2] == 0.0 and per["rouge1"][1] > 0.0
    assert rouge(preds, refs) == pytest.approx({k: sum(v) / 3 for k, v in per.items()})
    with pytest.raises(ValueError):
        rouge_per_example([], [])
