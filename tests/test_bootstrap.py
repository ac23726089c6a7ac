"""Bootstrap intervals and the paired test on synthetic per-document scores with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from sumtune.bootstrap import bootstrap_ci, paired_bootstrap, resample_indices


def _scores(n: int, seed: int = 1, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.4 + shift, 0.15, n), 0, 1)


def test_resample_indices_shape_range_and_reproducibility():
    idx = resample_indices(7, 50, seed=3)
    assert idx.shape == (50, 7) and idx.min() >= 0 and idx.max() < 7
    assert np.array_equal(idx, resample_indices(7, 50, seed=3))
    assert not np.array_equal(idx, resample_indices(7, 50, seed=4))
    with pytest.raises(ValueError):
        resample_indices(0, 10, 0)


def test_ci_contains_the_mean_and_shrinks_with_more_documents():
    small, large = _scores(50), _scores(2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # width ~ 1/sqrt(n): sqrt(40) ~ 6.3
    # close to the normal-theory interval of a mean
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / np.sqrt(large.size), rel=0.15)
    assert bootstrap_ci(large, level=0.5)[1] - bootstrap_ci(large, level=0.5)[0] < hi_l - lo_l


def test_ci_is_reproducible_with_the_seed():
    s = _scores(200)
    assert bootstrap_ci(s, seed=0) == bootstrap_ci(s, seed=0)
    assert bootstrap_ci(s, seed=0) != bootstrap_ci(s, seed=1)
    assert bootstrap_ci(list(s)) == bootstrap_ci(s)  # a plain list works too


def test_one_document_gives_a_degenerate_interval():
    assert bootstrap_ci([0.3]) == pytest.approx((0.3, 0.3))
    out = paired_bootstrap([0.5], [0.2])
    assert out["diff"] == pytest.approx(0.3) and out["low"] == pytest.approx(0.3) and out["high"] == pytest.approx(0.3)
    assert out["p_value"] == 1.0


def test_paired_detects_a_real_shift():
    base = _scores(500, seed=2)
    better = base + np.random.default_rng(5).normal(0.02, 0.05, base.size)  # +0.02 per document, noisy
    out = paired_bootstrap(better, base)
    assert out["diff"] == pytest.approx(float((better - base).mean()))
    assert out["low"] <= out["diff"] <= out["high"] and out["low"] > 0
    assert out["p_value"] < 0.05
    swapped = paired_bootstrap(base, better)
    assert swapped["diff"] == pytest.approx(-out["diff"]) and swapped["p_value"] < 0.05


def test_paired_does_not_detect_a_null_shift():
    base = _scores(500, seed=2)
    same = base + np.random.default_rng(6).normal(0.0, 0.05, base.size)  # noise, no shift
    out = paired_bootstrap(same, base)
    assert out["low"] <= 0 <= out["high"]
    assert out["p_value"] > 0.2
    assert paired_bootstrap(base, base)["p_value"] == 1.0


def test_paired_needs_the_same_documents_and_a_valid_level():
    with pytest.raises(ValueError):
        paired_bootstrap([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
