"""Bootstrap uncertainty of per-document scores (e.g. `metrics.rouge_per_example`): the documents are the
sample, so they are what is resampled.

`resample_indices` depends only on (n, n_resamples, seed): every method scored on the same test documents
with the same seed sees the same resamples, so their intervals and differences are paired. All resamples
are drawn at once and reduced with numpy, in chunks of rows to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # ~32 MB of float64 gathered at a time


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] int32 indices into n documents, drawn with replacement; same arguments, same draws."""
    if n < 1 or n_resamples < 1:
        raise ValueError(f"need n >= 1 and n_resamples >= 1, got n={n}, n_resamples={n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n), dtype=np.int32)


def _resampled_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean of `values` under each row of `indices`, gathering a bounded number of rows at a time."""
    rows = max(1, _CHUNK_ELEMENTS // indices.shape[1])
    return np.concatenate([values[indices[i:i + rows]].mean(axis=1) for i in range(0, len(indices), rows)])


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of scores, got shape {arr.shape}")
    return arr


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(
    scores: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score over documents (Efron & Tibshirani 1993).
    One document gives the degenerate interval (x, x)."""
    arr = _as_scores(scores)
    return _interval(_resampled_means(arr, resample_indices(arr.size, n_resamples, seed)), level)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Paired bootstrap test of mean(a) - mean(b) over the same documents (Koehn 2004; Berg-Kirkpatrick,
    Burkett & Klein 2012): both systems are resampled with the same documents, which removes the
    between-document variance they share. Returns the difference, its percentile interval (low, high) and
    a two-sided p-value: the share of resampled differences at least |diff| away from diff (the bootstrap
    distribution shifted to the null of no difference), with the +1 correction of Davison & Hinkley 1997
    so that it is never 0. One document is no evidence: p_value 1."""
    x, y = _as_scores(a), _as_scores(b)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same documents: {x.size} vs {y.size} scores")
    d = x - y
    diff = float(d.mean())
    means = _resampled_means(d, resample_indices(d.size, n_resamples, seed))
    low, high = _interval(means, level)
    extreme = int(np.count_nonzero(np.abs(means - diff) >= abs(diff)))
    p_value = 1.0 if d.size < 2 else (1 + extreme) / (1 + n_resamples)
    return {"diff": diff, "low": low, "high": high, "p_value": p_value}
