"""Sentence splitting for ROUGE-Lsum, which scores each sentence's LCS on its own.

The splitter is pySBD (rule-based, "Golden Rules" for English), run on each line: a newline is always
a sentence boundary, since references hold one highlight per line. Why not nltk Punkt, the usual choice
for CNN/DailyMail: its trained English parameters are nltk data that these machines cannot download,
and the pickled form must never be loaded; loading `punkt_tab` only where present would make a score
depend on the machine. pySBD splits every hand-made news case of `tests/test_sentences.py` (abbreviations,
initials, quotes, numbers, ellipses) as written there, and is pure Python, pickle-free and deterministic.
Known misses: '"It's over." "No," she replied.' stays one sentence.
Lsum therefore differs slightly from Punkt-based numbers; `SPLITTER` is recorded beside the metrics.
"""

from __future__ import annotations

from functools import cache

import pysbd

SPLITTER = f"pysbd-{pysbd.__version__}-en"


@cache
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)  # clean=False: the text is kept as written


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, stripped, in order; newlines always end a sentence, blank ones are dropped."""
    out: list[str] = []
    for line in text.splitlines():
        if line.strip():
            out.extend(s.strip() for s in _segmenter().segment(line) if s.strip())
    return out


def leading_sentences(text: str, n: int) -> list[str]:
    """The first `n` sentences of `text` as `split_sentences` sees each of them alone: pySBD leaves
    some spans of a long text whole that it splits when given alone (after a closing quote, e.g.
    '... "could do better." He said ...'), so a span it splits is split again until it does not. Joined
    with newlines, the result is what ROUGE-Lsum splits it into: `n` sentences, not more."""
    out: list[str] = []
    pending = split_sentences(text)
    while pending and len(out) < n:
        sentence = pending.pop(0)
        parts = split_sentences(sentence)
        if len(parts) > 1:
            pending[:0] = parts  # each part is shorter: this ends
        else:
            out.append(sentence)
    return out
