"""README.md is the front page (short, the two set-up commands first) and docs/*.md the guides: every
relative link in them leads to a file that exists and, with a #anchor, to a heading of that file;
every guide is reachable from the README. Reads text only: fast, offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase; punctuation dropped except hyphens (letters, digits,
    underscores and spaces stay); each space becomes a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (``` fences, indented ones in list items too)."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of `path` (a repeated slug gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The Markdown link targets in `path`'s prose (not in code blocks or code spans)."""
    found = []
    for line in _prose_lines(path):
        found += LINK.findall(INLINE_CODE.sub("code", line))
    return found


def _local(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, https:, mailto:, ...


def test_slug_is_githubs():
    assert slug("Planning a study: `sumtune plan`") == "planning-a-study-sumtune-plan"
    assert slug("Dataset presets: `--data-preset cnndm | xsum | samsum`") == (
        "dataset-presets---data-preset-cnndm--xsum--samsum")
    assert slug("Several processes / GPUs") == "several-processes--gpus"
    assert slug("Where a training step's time goes") == "where-a-training-steps-time-goes"
    assert slug("Instruct models: `data.prompt_format: chat`") == "instruct-models-dataprompt_format-chat"


def test_readme_is_a_short_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; the guides belong in docs/"


def test_readme_first_code_block_is_the_two_commands():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no code block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_ci_runs_make_test():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert "make test" in lines


def test_there_are_guides():
    assert DOCS, "docs/ holds no guide"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path):
    broken = []
    for target in filter(_local, links(path)):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_guide_is_linked_from_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if _local(t) and t[0] != "#"}
    missing = [p.relative_to(ROOT).as_posix() for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"
