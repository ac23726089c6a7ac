"""What a calibration of one method measured (`Calibration`), how each measurement projects to a
whole step or pass (by the tokens it computed), and which rows or batches are sampled for it.
`recipes.calibrate` measures; `recipes.plan` projects."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Calibration:
    """What one method's calibration measured (seconds, MB); None where it does not apply."""

    method: str
    trains: bool
    trainable_params: int = 0
    total_params: int = 0
    precision: str = ""
    setup_seconds: float = 0.0  # data, model, method, fast paths (each run pays it)
    step_seconds: list[float] = field(default_factory=list)  # timed optimizer steps
    cached_step_seconds: list[float] = field(default_factory=list)  # the same steps, feature cache warm
    rows_per_step: int = 0
    rows_alone: bool = False  # each training row ran alone (`fastpath.loss.rows_alone`): the longest micro-batch timed
    val_batch_seconds: list[float] = field(default_factory=list)  # sampled passes of validation
    cached_val_batch_seconds: list[float] = field(default_factory=list)
    val_batch_tokens: list[int] = field(default_factory=list)  # tokens each sampled pass computes
    val_pass_tokens: int = 0  # tokens the whole validation pass computes
    checkpoint_seconds: float = 0.0
    save_seconds: float = 0.0  # the best weights into RUN/adapter (at each improving validation)
    train_peak_mb: float = 0.0
    feature_cache_mb: float = 0.0  # projected extra: the cache of every train+validation row, RSS only
    memory_kind: str = ""
    eval_load_seconds: float = 0.0  # the run loaded back, test rows read and tokenised
    loss_seconds: list[float] = field(default_factory=list)  # sampled passes of the test loss pass
    loss_tokens: list[int] = field(default_factory=list)
    loss_pass_tokens: int = 0
    decode_build_seconds: float = 0.0  # building the Generator (its stop tables)
    decode_batch_seconds: list[float] = field(default_factory=list)  # the first (longest) batch, then sampled ones
    articles_decoded: int = 0
    score_seconds: float = 0.0  # ROUGE, lengths and bootstrap intervals of the decoded articles
    eval_peak_mb: float = 0.0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    step_flops: list[int] = field(default_factory=list)  # every planned step's training FLOPs (a FLOPs budget)
    eval_shared_from: str | None = None  # the method whose evaluation measurements this one shares
    step_tokens: list[int] = field(default_factory=list)  # tokens each timed step computed (padding included)
    mean_step_tokens: float = 0.0  # tokens of the first epoch's steps, on average (0: not counted)
    error: str | None = None  # out of memory (or another failure) during the calibration

    @property
    def feature_cache(self) -> bool:
        return bool(self.cached_step_seconds)

    def per_step(self, cached: bool = False) -> float:
        """Seconds of an average optimizer step: each timed step's seconds per computed token x the
        epoch's mean computed tokens a step (the median of those), so that a few timed steps of
        shorter or longer rows than usual still project the whole epoch; without token counts the
        median timed step."""
        seconds = self.cached_step_seconds if cached else self.step_seconds
        if self.mean_step_tokens and len(self.step_tokens) == len(seconds) and all(self.step_tokens):
            return statistics.median(s / t for s, t in zip(seconds, self.step_tokens, strict=True)) * \
                self.mean_step_tokens
        return statistics.median(seconds)

    def val_pass(self, cached: bool = False) -> float:
        """Seconds of one validation pass: the sampled passes' seconds per token x the pass's tokens."""
        return per_token(self.cached_val_batch_seconds if cached else self.val_batch_seconds,
                         self.val_batch_tokens) * self.val_pass_tokens

    def loss_pass(self) -> float:
        """Seconds of the test split's loss pass, likewise."""
        return per_token(self.loss_seconds, self.loss_tokens) * self.loss_pass_tokens

    def decode_pass(self, batches: int) -> float:
        """Seconds decoding `batches` batches: building the decoder, the first (longest) batch as timed, the
        others at the mean of the later ones timed (none: at the first's, an upper bound as its prompts are
        the longest)."""
        if not batches or not self.decode_batch_seconds:
            return 0.0
        first, later = self.decode_batch_seconds[0], self.decode_batch_seconds[1:]
        return self.decode_build_seconds + first + mean(later or [first]) * (batches - 1)


def longest_first_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices of each batch, as the loss loop and `Generator` batch: sorted longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def strata(batches: list[list[int]], count: int) -> list[list[int]]:
    """`count` batches evenly spaced through `batches` (the middle of each of `count` strata)."""
    n = len(batches)
    count = min(count, n)
    if count < 1:
        return []
    picks = sorted({min(n - 1, int((i + 0.5) * n / count)) for i in range(count)})
    return [batches[i] for i in picks]


def loss_units(lengths: list[int], batch_size: int, alone: bool) -> list[list[int]]:
    """The forward passes a loss loop makes, longest first, as far as their cost goes: each row alone where
    the loss computes rows alone (no padding computed), else padded batches."""
    return longest_first_batches(lengths, 1 if alone else batch_size)


def unit_tokens(unit: list[int], lengths: list[int]) -> int:
    """Tokens one pass computes: its rows padded to its longest (a row alone: its length)."""
    return len(unit) * max(lengths[i] for i in unit)


def per_token(seconds: list[float], tokens: list[int]) -> float:
    """Seconds per computed token of the timed passes (0 with none)."""
    return sum(seconds) / sum(tokens) if tokens and sum(tokens) else 0.0


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0
