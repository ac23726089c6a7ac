"""Fuzz the readers of user files: 200 seeded bad or odd CSV / JSON Lines files and Kaggle
directories. Each must either parse to the expected rows or fail with one `UserError` line
naming the file and, where a line is at fault, its 1-based line in the file; never another
exception. The decisions checked here are listed in `sumtune.data.readers`."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sumtune import data
from sumtune.cli import main
from sumtune.config import build_config
from sumtune.errors import UserError

N_CASES = 200
COLS = ["id", "article", "highlights"]
WORDS = "council mayor river bridge school budget storm police court market hospital vote".split()


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()


@dataclass
class Case:
    name: str  # file name, or the bad file of a Kaggle directory
    files: dict[str, bytes]  # one file, or train/validation/test.csv
    rows: dict[str, tuple[str, str]] | None = None  # expected id -> (article, summary); None: an error
    line: int | None = None  # the line at fault, if any
    words: list[str] = field(default_factory=list)  # in the error message


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def _rows(rng: random.Random, n: int | None = None) -> list[dict]:
    return [{"id": f"{i:04d}", "article": _text(rng, rng.randint(5, 30)), "highlights": _text(rng, 6)}
            for i in range(n or rng.randint(6, 12))]


def _expect(rows: list[dict]) -> dict[str, tuple[str, str]]:
    return {str(r["id"]): (data.clean_article(str(r["article"])), data.clean_summary(str(r["highlights"])))
            for r in rows if str(r["article"]).strip() and str(r["highlights"]).strip()}


def _csv_lines(rows: list[dict], cols=COLS) -> list[str]:
    """One CSV record per item (a record with a quoted newline spans several file lines)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cols)
    head = [out.getvalue()]
    recs = []
    for r in rows:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([r.get(c, "") for c in cols])
        recs.append(out.getvalue())
    return head + recs


def _line_of(records: list[str], k: int) -> int:
    """1-based file line where record k (0 = header) starts."""
    return 1 + sum(r.count("\n") for r in records[:k])


def _jl(rows: list[dict]) -> list[str]:
    return [json.dumps(r) + "\n" for r in rows]


# --- CSV cases ------------------------------------------------------------------


def csv_odd_but_fine(rng: random.Random) -> Case:
    """BOM, CRLF, quoted newlines, empty lines, numbers as text, an extra column, a huge field."""
    rows = _rows(rng)
    for r in rng.sample(rows, 2):
        r["article"] = r["article"].replace(" ", "\n", 2)  # quoted newlines
    rows[rng.randrange(len(rows))]["article"] = str(rng.randint(0, 10**9))  # a number is text
    if rng.random() < 0.25:
        rows[rng.randrange(len(rows))]["article"] = "word " * 400_000  # 2 MB
    cols = COLS + ["url"] if rng.random() < 0.5 else COLS
    for r in rows:
        r["url"] = f"https://example.com/{r['id']}"
    text = "".join(_csv_lines(rows, cols))
    if rng.random() < 0.5:
        text = text.replace("\n\n", "\n").replace(f"{rows[0]['id']},", f"\n\n{rows[0]['id']},", 1)  # empty lines
    if rng.random() < 0.5:
        text = text.replace("\n", "\r\n")
    raw = text.encode()
    return Case("news.csv", {"news.csv": (b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + raw}, _expect(rows))


def csv_extra_field(rng: random.Random) -> Case:
    rows = _rows(rng)
    rows[0]["article"] = "First\nline and\nmore."  # lines before the bad record
    recs = _csv_lines(rows)
    k = rng.randrange(2, len(recs))
    recs[k] = recs[k].rstrip("\n") + ",surplus\n"
    return Case("x.csv", {"x.csv": "".join(recs).encode()}, line=_line_of(recs, k), words=["fields"])


def csv_unclosed_quote(rng: random.Random) -> Case:
    rows = _rows(rng)
    rows[0]["article"] = "Spans\ntwo lines."
    recs = _csv_lines(rows)
    k = rng.randrange(2, len(recs))
    rid, rest = recs[k].split(",", 1)
    recs[k] = f'{rid},"{rest}'
    return Case("x.csv", {"x.csv": "".join(recs).encode()}, line=_line_of(recs, k), words=["quote"])


def csv_truncated(rng: random.Random) -> Case:
    """The last record cut inside its article: it has no summary, so it is skipped."""
    rows = _rows(rng)
    text = "".join(_csv_lines(rows))
    cut = text.rindex(rows[-1]["article"]) + len(rows[-1]["article"]) // 2
    return Case("x.csv", {"x.csv": text[:cut].encode()}, _expect(rows[:-1]))


def csv_short_row(rng: random.Random) -> Case:
    """A record without its summary field: skipped like an empty summary."""
    rows = _rows(rng)
    k = rng.randrange(len(rows))
    recs = _csv_lines(rows)
    recs[k + 1] = recs[k + 1].rsplit(",", 1)[0] + "\n"
    return Case("x.csv", {"x.csv": "".join(recs).encode()}, _expect(rows[:k] + rows[k + 1 :]))


def csv_bad_bytes(rng: random.Random) -> Case:
    """A NUL byte or a Latin-1 / cp1252 line (mixed encodings) at line k."""
    rows = _rows(rng)
    recs = _csv_lines(rows)
    k = rng.randrange(1, len(recs))
    bad, word = rng.choice([(b"\x00", "NUL"), ("café".encode("latin-1"), "UTF-8"), ("“q”".encode("cp1252"), "UTF-8")])
    body = b"".join(r.encode() if i != k else r.encode().replace(b",", b"," + bad, 1) for i, r in enumerate(recs))
    return Case("x.csv", {"x.csv": body}, line=_line_of(recs, k), words=[word])


def csv_columns(rng: random.Random) -> Case:
    rows = _rows(rng)
    kind = rng.choice(["missing", "duplicate"])
    if kind == "missing":
        text = "".join(_csv_lines(rows, ["id", "article"]))
        return Case("x.csv", {"x.csv": text.encode()}, words=["missing column(s) highlights", "found id, article"])
    text = "".join(_csv_lines(rows, ["id", "article", "article", "highlights"]))
    return Case("x.csv", {"x.csv": text.encode()}, line=1, words=["article named twice"])


def csv_no_rows(rng: random.Random) -> Case:
    body, word = rng.choice([(b"", "empty"), (b"\n\n  \n", "empty"), (b"id,article,highlights\n", "header only"),
                             (b"id,article,highlights\r\n\r\n", "header only")])
    return Case("x.csv", {"x.csv": body}, words=[word])


def csv_random_bytes(rng: random.Random) -> Case:
    return Case("x.csv", {"x.csv": bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))})


# --- JSON Lines cases -------------------------------------------------------------


def jl_odd_but_fine(rng: random.Random) -> Case:
    """BOM, CRLF, empty lines, numbers as text, extra keys, a huge field."""
    rows = _rows(rng)
    for r in rows:
        r["url"] = f"https://example.com/{r['id']}"
    rows[rng.randrange(len(rows))]["article"] = rng.choice([rng.randint(0, 10**9), 2.5])
    if rng.random() < 0.5:  # numeric ids become text
        for i, r in enumerate(rows):
            r["id"] = i
    if rng.random() < 0.25:
        rows[rng.randrange(len(rows))]["article"] = "word " * 400_000  # 2 MB
    lines = _jl(rows)
    for _ in range(rng.randint(0, 3)):
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["\n", "  \n", "\t\n"]))
    text = "".join(lines)
    if rng.random() < 0.5:
        text = text.replace("\n", "\r\n")
    if rng.random() < 0.3:
        text = text.rstrip("\r\n")  # no newline at the end
    bom = b"\xef\xbb\xbf" if rng.random() < 0.5 else b""
    return Case("news.jsonl", {"news.jsonl": bom + text.encode()}, _expect(rows))


def jl_bad_line(rng: random.Random) -> Case:
    """Line k is not valid JSON, not an object, or has a list/object/bool where text is expected."""
    lines = _jl(_rows(rng))
    for _ in range(rng.randint(0, 3)):  # empty lines: the line number is not the row number
        lines.insert(rng.randrange(len(lines)), "\n")
    k = rng.randrange(1, len(lines))
    bad, words = rng.choice([
        ('{"id": "x", "article": "a",\n', ["not valid JSON"]), ("{bad json}\n", ["not valid JSON"]),
        ('[1, 2]\n', ["not a JSON object"]), ('"just text"\n', ["not a JSON object"]), ("null\n", ["not a JSON object"]),
        ('42\n', ["not a JSON object"]), ('{"id": "z", "article": ["a"], "highlights": "s"}\n', ["'article'", "list"]),
        ('{"id": "z", "article": "a", "highlights": {"x": 1}}\n', ["'highlights'", "object"]),
        ('{"id": "z", "article": true, "highlights": "s"}\n', ["'article'"]),
    ])
    lines.insert(k, bad)
    return Case("x.jsonl", {"x.jsonl": "".join(lines).encode()}, line=k + 1, words=words)


def jl_truncated(rng: random.Random) -> Case:
    lines = _jl(_rows(rng))
    text = "".join(lines)
    cut = len(text) - rng.randint(3, len(lines[-1]) - 2)
    return Case("x.jsonl", {"x.jsonl": text[:cut].encode()}, line=len(lines), words=["not valid JSON", "cut short"])


def jl_bad_bytes(rng: random.Random) -> Case:
    lines = [x.encode() for x in _jl(_rows(rng))]
    k = rng.randrange(len(lines))
    bad, word = rng.choice([(b"\x00", "NUL"), ("café".encode("latin-1"), "UTF-8"), ("“q”".encode("cp1252"), "UTF-8")])
    lines[k] = lines[k].replace(b'": "', b'": "' + bad, 1)
    return Case("x.jsonl", {"x.jsonl": b"".join(lines)}, line=k + 1, words=[word])


def jl_columns(rng: random.Random) -> Case:
    rows = _rows(rng)
    kind = rng.choice(["missing", "some ids"])
    if kind == "missing":
        for r in rows:
            r["summary"] = r.pop("highlights")
        return Case("x.jsonl", {"x.jsonl": "".join(_jl(rows)).encode()}, words=["missing column(s) highlights", "summary"])
    k = rng.randrange(1, len(rows))
    del rows[k]["id"]
    return Case("x.jsonl", {"x.jsonl": "".join(_jl(rows)).encode()}, line=k + 1, words=["no 'id'"])


def jl_no_rows(rng: random.Random) -> Case:
    return Case("x.jsonl", {"x.jsonl": rng.choice([b"", b"\n\n", b"\xef\xbb\xbf", b" \r\n\t\n"])}, words=["empty"])


def jl_random_bytes(rng: random.Random) -> Case:
    return Case("x.jsonl", {"x.jsonl": bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))})


# --- Kaggle directory with one bad file ----------------------------------------------


def kaggle_one_bad(rng: random.Random) -> Case:
    bad = rng.choice([csv_extra_field, csv_unclosed_quote, csv_bad_bytes, csv_columns, csv_no_rows])(rng)
    name = rng.choice(["train.csv", "validation.csv", "test.csv"])
    files = {f: "".join(_csv_lines(_rows(rng))).encode() for f in ("train.csv", "validation.csv", "test.csv")}
    files[name] = bad.files["x.csv"]
    return Case(name, files, line=bad.line, words=bad.words)


KINDS = [csv_odd_but_fine, csv_extra_field, csv_unclosed_quote, csv_truncated, csv_short_row, csv_bad_bytes,
         csv_columns, csv_no_rows, csv_random_bytes, jl_odd_but_fine, jl_bad_line, jl_truncated, jl_bad_bytes,
         jl_columns, jl_no_rows, jl_random_bytes, kaggle_one_bad]


def _case(i: int) -> Case:
    return KINDS[i % len(KINDS)](random.Random(i))


def _write(case: Case, root: Path) -> tuple[Path, Path]:
    """(the source to pass, the file the error must name)."""
    root.mkdir(parents=True)
    for name, body in case.files.items():
        (root / name).write_bytes(body)
    src = root if len(case.files) > 1 else root / case.name
    return src, root / case.name


def _check(i: int, case: Case, tmp: Path) -> str | None:
    """None when the reader did right, else what went wrong."""
    src, bad_file = _write(case, tmp / f"case{i}")
    # splits of 2+ rows: one skipped row cannot leave a split empty
    cfg = build_config(flags={"data.source": str(src), "data.val_ratio": 0.3, "data.test_ratio": 0.3}).data
    try:
        splits = data.load_splits(cfg, seed=i)
    except UserError as e:
        msg = str(e)
        if case.rows is not None:
            return f"expected rows, got UserError: {msg}"
        if "\n" in msg or str(bad_file) not in msg:
            return f"message is not one line naming {bad_file}: {msg!r}"
        line = re.search(r", line (\d+)", msg)
        if case.line is not None and (line is None or int(line.group(1)) != case.line):
            return f"expected line {case.line}: {msg}"
        missing = [w for w in case.words if w not in msg]
        return f"expected {missing} in: {msg}" if missing else None
    except Exception as e:  # noqa: BLE001 - the point of the test
        return f"{type(e).__name__}: {e}"
    if case.rows is None:
        return f"expected an error (line {case.line}, {case.words}), got {sum(len(s) for s in splits.values())} rows"
    got = {r["id"]: (r["article"], r["summary"]) for s in splits.values() for r in s}
    if got != case.rows:
        diff = sorted(set(got.items()) ^ set(case.rows.items()), key=repr)[:2]
        return f"rows differ ({len(got)} vs {len(case.rows)} expected): {str(diff)[:300]}"
    return None


def test_fuzz_readers(tmp_path):
    failures = []
    for i in range(N_CASES):
        case = _case(i)
        why = _check(i, case, tmp_path)
        if why:
            failures.append(f"case {i} ({KINDS[i % len(KINDS)].__name__}): {why}")
    assert not failures, "\n".join(failures)


def test_cases_are_deterministic():
    assert [_case(i).files for i in range(0, N_CASES, 7)] == [_case(i).files for i in range(0, N_CASES, 7)]


def test_cli_reports_a_bad_line_in_one_line(tmp_path, tiny_gpt2, capsys):
    """`sumtune train` with a bad JSON line: exit 2, one line naming file and line, no run directory."""
    path = tmp_path / "news.jsonl"
    lines = _jl(_rows(random.Random(0), 8))
    lines[2] = '{"id": "0002", "article": oops}\n'
    path.write_text("".join(lines), encoding="utf-8")
    run = tmp_path / "run"
    code = main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(path),
                 "--output-dir", str(run), "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and f"{path}, line 3: not valid JSON" in err and "Traceback" not in err
    assert not run.exists()
