"""The sentence splitter on news-style text: abbreviations, initials, quotes, numbers and ellipses must
not end a sentence where they do not, and lines always do."""

from __future__ import annotations

import pytest

from sumtune.sentences import SPLITTER, split_sentences

CASES = [
    ("The U.S. economy grew 3.5 percent. Officials were pleased.",
     ["The U.S. economy grew 3.5 percent.", "Officials were pleased."]),
    ("Mr. Smith met Dr. Jones on Jan. 5 in Washington. They talked.",
     ["Mr. Smith met Dr. Jones on Jan. 5 in Washington.", "They talked."]),
    ("J. K. Rowling wrote the books. She is rich.", ["J. K. Rowling wrote the books.", "She is rich."]),
    ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
    ("The deal is worth $1.2 billion. Shares rose.", ["The deal is worth $1.2 billion.", "Shares rose."]),
    ("He paused... Then he spoke again.", ["He paused...", "Then he spoke again."]),
    ("She lives at No. 10 Downing Street. It is famous.", ["She lives at No. 10 Downing Street.", "It is famous."]),
    ("The team moved to the U.S. The fans were upset.", ["The team moved to the U.S.", "The fans were upset."]),
    ("Is it true? Yes! It is.", ["Is it true?", "Yes!", "It is."]),
    ("Gov. Brown and Sen. McCain spoke at 3 p.m. on Friday. Nobody listened.",
     ["Gov. Brown and Sen. McCain spoke at 3 p.m. on Friday.", "Nobody listened."]),
    ("The firm, Acme Inc., sued. Lt. Col. Smith testified.", ["The firm, Acme Inc., sued.", "Lt. Col. Smith testified."]),
    ("'I am done,' he said. 'Goodbye.'", ["'I am done,' he said.", "'Goodbye.'"]),
    ("(CNN) -- Police arrested John Smith, 34, on Tuesday. He was charged.",
     ["(CNN) -- Police arrested John Smith, 34, on Tuesday.", "He was charged."]),
    ("The St. Louis Cardinals won. Prof. Lee and Ms. Kim cheered.",
     ["The St. Louis Cardinals won.", "Prof. Lee and Ms. Kim cheered."]),
    ("He was born in Sept. 1990 in the U.K. and moved later.", ["He was born in Sept. 1990 in the U.K. and moved later."]),
    ("It cost 5 million euros (about $6.8 million). The E.U. agreed.",
     ["It cost 5 million euros (about $6.8 million).", "The E.U. agreed."]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_news_sentences(text, expected):
    assert split_sentences(text) == expected


def test_newlines_are_boundaries_and_blank_lines_dropped():
    text = "Highlight one about the U.S.\n\n  highlight two without a stop  \nThree. Four."
    assert split_sentences(text) == ["Highlight one about the U.S.", "highlight two without a stop", "Three.", "Four."]


def test_degenerate_inputs():
    assert split_sentences("") == []
    assert split_sentences(" \n\t\n") == []
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]


def test_no_text_is_lost():
    text = ('(CNN) -- Mr. Smith, 45, said the U.S. grew 3.5% in Jan. "It is great," he said... '
            "Really?! Yes.\nNext line e.g. here i.e. there. www.cnn.com. Done")
    assert "".join(split_sentences(text)).replace(" ", "") == text.replace(" ", "").replace("\n", "")


def test_splitter_is_named_with_its_version():
    assert SPLITTER.startswith("pysbd-") and SPLITTER.endswith("-en")
