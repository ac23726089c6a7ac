"""Cleaning CNN/DailyMail text: whitespace and the boilerplate that is safe to remove."""

from __future__ import annotations

import re

# Daily Mail articles open with a byline and time stamps, e.g.
#   "By . Associated Press . PUBLISHED: . 14:03 EST, 3 May 2013 . | . UPDATED: . 14:04 EST, 3 May 2013 . "
#   "By . Sarah Griffiths . Last updated at 5:03 PM on 15th October 2011 . "
# The author segment holds no full stop, so a body sentence is never taken for it.
_DM_BYLINE = re.compile(r"^By \. [A-Z][^.]{0,79}? \. (?:and \. [A-Z][^.]{0,79}? \. )?")
_DM_STAMPS = re.compile(
    r"^(?:(?:(?:PUBLISHED|UPDATED): \. \d{1,2}:\d{2} [A-Z]{3}, \d{1,2} [A-Z][a-z]+ \d{4} \. (?:\| \. )?)+"
    r"|Last updated at \d{1,2}:\d{2} [AP]M on \d{1,2}(?:st|nd|rd|th)? [A-Z][a-z]+ \d{4} \. )"
)
_DM_VIDEO = re.compile(r"\bScroll down for (?:the )?videos? \.\s*")
# "WASHINGTON (CNN) -- ", "LONDON, England (CNN) -- ", "(CNN)": capitalised dateline words only.
_CNN_TAG = re.compile(r"^((?:[A-Z][\w.'-]*)(?:,? [A-Z][\w.'-]*){0,5} )?\(CNN\)\s*(?:--\s*)?")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


def clean_article(text: str) -> str:
    """Collapse whitespace and strip CNN/DM boilerplate that is safe to remove (Daily Mail
    bylines, PUBLISHED/UPDATED stamps, "Scroll down for video", the "(CNN) --" tag);
    case and punctuation are kept."""
    text = _SPACES.sub(" ", text.replace("\n", " ")).strip()
    text = _DM_STAMPS.sub("", _DM_BYLINE.sub("", text, count=1), count=1)
    text = _DM_VIDEO.sub("", text)
    text = _CNN_TAG.sub(lambda m: f"{m.group(1).strip()} -- " if m.group(1) else "", text, count=1)
    return text.strip()


def clean_summary(text: str) -> str:
    """One highlight sentence per line (ROUGE-Lsum splits on newlines), whitespace collapsed."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)
