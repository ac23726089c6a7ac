"""What reaches the terminal: sumtune's own lines, and none of the libraries' messages that a user
cannot act on, unless `sumtune -v`. Each silenced message is named here, with why it says nothing
to a user; everything else (a warning that asks for an action) still gets through.

`library_output(verbose)` sets this up for one command and undoes its filters afterwards, so a
process that runs several commands (the tests) sees each with its own verbosity."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# transformers' tokenizer warns when a text is longer than the model's positions; sumtune cuts the
# article itself to fit (data/tokenize.py), so the warning tells a user nothing to act on
TOKENIZER_LENGTH = "Token indices sequence length is longer"
TOKENIZER_LOGGER = "transformers.tokenization_utils_base"

# (message regex, category): Python warnings raised inside the libraries, about the libraries' own calls
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # PEFT 0.21 reads a deprecated transformers 5 property on every PEFT model it wraps
    (r".*is_gradient_checkpointing.*", FutureWarning),
    # PEFT's prefix tuning hands the prefixes to the model as `past_key_values` (sumtune's own
    # decoding passes `cache` where the model takes it: decoding/cache.py)
    (r"`past_key_values` is deprecated", FutureWarning),
)

# chatty loggers: their warnings still show, their info/debug lines do not
_NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "fsspec", "datasets")
# transformers looks up optional hub kernels when a model loads; offline, `kernels` warns once per
# kernel that it skips a publisher check for a kernel sumtune never fetches: nothing to act on
_SILENT_UNLESS_VERBOSE = ("kernels",)


class _DropMessages(logging.Filter):
    """Drops the log records whose message contains one of `texts`."""

    def __init__(self, *texts: str):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(t in message for t in self.texts)


@contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """For one command: log lines on stderr (debug with `verbose`), progress bars of the libraries
    only with `verbose`, and without it none of the messages named above."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _SILENT_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    # offline, the Hub client logs a warning per retry before our one-line error says it all
    # (the library sets its level when first imported, from HF_HUB_VERBOSITY)
    os.environ.setdefault("HF_HUB_VERBOSITY", "debug" if verbose else "error")
    logging.getLogger("huggingface_hub").setLevel(logging.DEBUG if verbose else logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _progress_bars(verbose)
    tokenizer_log = logging.getLogger(TOKENIZER_LOGGER)
    drop = _DropMessages(TOKENIZER_LENGTH)
    with warnings.catch_warnings():
        if not verbose:
            for message, category in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            tokenizer_log.addFilter(drop)
        try:
            yield
        finally:
            tokenizer_log.removeFilter(drop)


def _progress_bars(verbose: bool) -> None:
    """datasets' per-map and transformers' weight-loading/saving bars only with `verbose`
    (sumtune's own bars, training and generating, always show)."""
    import transformers  # late: transformers (1 s to import); the command line imports this module

    if verbose:
        transformers.utils.logging.enable_progress_bar()
    else:
        transformers.utils.logging.disable_progress_bar()
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "0" if verbose else "1"
    if "datasets" in sys.modules:  # already imported (read at import time otherwise)
        import datasets  # late: only touches a library already imported

        if verbose:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()
