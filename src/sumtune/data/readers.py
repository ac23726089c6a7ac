"""Reading one user file, CSV or JSON Lines, into a memory-mapped Dataset.

Every failure is one `UserError` line naming the file and, where a line is at fault, its
1-based line in the file (for a CSV record spanning lines: the line where it starts).

Decisions:
- a UTF-8 BOM and CRLF line endings are read as if absent; NUL bytes and non-UTF-8 bytes are
  refused with their line;
- CSV: every column is text (a number in the article column is its digits); a row with fewer
  fields than the header has the missing ones empty (and is skipped if that leaves its article
  or summary empty), a row with more is refused; a column named twice is refused;
- JSON Lines: empty lines are skipped; each other line must be one JSON object; in the
  article, summary and id columns a number becomes its text (``5`` -> ``"5"``), null or an absent
  key counts as missing, anything else (true/false, a list, an object) is refused; of a key
  given twice in one object the last value counts; the id is in every line or in none;
- fields of any size are read (a 2 MB article is fine).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sumtune.errors import UserError

BOM = b"\xef\xbb\xbf"


def cache_key(*parts: Any) -> str:
    """A ``datasets`` fingerprint for a step computed from its inputs."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@contextlib.contextmanager
def datasets_quiet() -> Iterator[None]:
    """datasets logs read failures at ERROR on stderr; we report them as one UserError instead."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _find_bad_utf8(path: Path) -> int | None:
    """1-based line number of the first non-UTF-8 byte sequence, or None."""
    line = 1
    with open(path, "rb") as f:
        tail = b""
        while chunk := f.read(1 << 24):
            buf = tail + chunk
            try:
                buf.decode("utf-8")
                tail = b""
            except UnicodeDecodeError as e:
                if e.end < len(buf) or e.reason != "unexpected end of data":
                    return line + buf[: e.start].count(b"\n")
                tail = buf[e.start :]
                buf = buf[: e.start]
            line += buf.count(b"\n")
    return line if tail else None


def _is_utf16(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) in (b"\xff\xfe", b"\xfe\xff")


def _utf8_message(path: Path, line: int) -> str:
    if _is_utf16(path):
        return f"{path}: UTF-16 text; re-encode the file as UTF-8 (e.g. iconv -f utf-16 -t utf-8 {path.name} > fixed{path.suffix})"
    return (f"{path}, line {line}: not valid UTF-8; re-encode the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix})")


def utf8_error(path: Path) -> UserError | None:
    bad = _find_bad_utf8(path)
    return None if bad is None else UserError(_utf8_message(path, bad))


def _nul_error(path: Path, line: int) -> UserError:
    if _is_utf16(path):
        return UserError(_utf8_message(path, line))
    return UserError(f"{path}, line {line}: NUL bytes; the file is damaged or not UTF-8 text (UTF-16?); "
                     "fix or delete that line")


def _find_nul(path: Path) -> int | None:
    """1-based line number of the first NUL byte, or None."""
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            at = chunk.find(b"\x00")
            if at >= 0:
                return line + chunk[:at].count(b"\n")
            line += chunk.count(b"\n")
    return None


def has_content(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


# --- CSV ----------------------------------------------------------------------


@contextlib.contextmanager
def _csv_any_field_size() -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit((1 << 31) - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def csv_header(path: Path) -> list[str]:
    """The CSV's column names; fails on an empty, header-only, undecodable or NUL-holding file."""
    if (nul := _find_nul(path)) is not None:
        raise _nul_error(path, nul)
    with open(path, "rb") as f:
        first = f.readline()
        has_row = any(line.strip() for line in f)
    if not first.strip():
        raise UserError(f"{path}: file is empty; it needs a header row and examples")
    try:
        with _csv_any_field_size():
            header = next(csv.reader([first.decode("utf-8-sig")]))
    except UnicodeDecodeError:
        raise utf8_error(path) or UserError(_utf8_message(path, 1)) from None
    except csv.Error as e:
        raise UserError(f"{path}, line 1: not a CSV header ({e}); the first line names the columns") from None
    if not has_row:
        raise UserError(f"{path}: header only ({', '.join(header)}), no examples")
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if twice:
        raise UserError(f"{path}, line 1: column(s) {', '.join(twice)} named twice; rename or delete the extra one")
    return [c or f"column{i}" for i, c in enumerate(header)]


def csv_diagnose(path: Path, n_cols: int, pandas_error: str) -> UserError | None:
    """Find the line of a record that pandas could not read: its line numbers count records,
    not the file's lines (quoted newlines, skipped empty lines)."""
    last_start = 0
    with open(path, encoding="utf-8-sig", newline="") as f, _csv_any_field_size():
        reader = csv.reader(f)
        next(reader, None)
        end = reader.line_num  # the header's last line
        for rec in reader:
            start, end = end + 1, reader.line_num
            if not rec:
                continue
            last_start = start
            if len(rec) > n_cols:
                return UserError(f"{path}, line {start}: {len(rec)} fields, the header has {n_cols}; "
                                 "quote fields that hold commas, or fix that line")
    if "EOF inside string" in pandas_error and last_start:
        return UserError(f"{path}, line {last_start}: the record starting here has a quoted field that is never "
                         "closed (is the file cut short?); close the quote")
    return None


# --- JSON Lines -----------------------------------------------------------------


def _as_text(value: Any, column: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    kind = {bool: "true/false", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    raise UserError(f"{where}: column '{column}' holds {kind}, not text; give it a string")


def _json_object(raw: bytes, path: Path, n: int) -> dict | None:
    """Line n of the file as an object; None for an empty line."""
    if n == 1 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    if not raw.strip():
        return None
    where = f"{path}, line {n}"
    if b"\x00" in raw:
        raise _nul_error(path, n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(_utf8_message(path, n)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file is cut short?)" if not raw.endswith(b"\n") else ""
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){cut}; fix or delete that line") from None
    if not isinstance(obj, dict):
        kind = {list: "a list", str: "a string", type(None): "null", bool: "true/false"}.get(type(obj), "a number")
        raise UserError(f"{where}: {kind}, not a JSON object; each line must be one object {{\"column\": value, ...}}")
    return obj


def _jsonl_rows(path: str, columns: tuple[str, ...], id_column: str, stamp: Any) -> Iterator[dict]:
    """The rows of a JSON Lines file with the given columns as text (see the module's decisions)."""
    file, keys, n_rows = Path(path), {}, 0
    with_id = without_id = 0  # first line with / without an id
    with open(file, "rb") as f:
        for n, raw in enumerate(f, 1):
            obj = _json_object(raw, file, n)
            if obj is None:
                continue
            keys.update(dict.fromkeys(obj))
            n_rows += 1
            if id_column in obj and obj[id_column] is not None:
                with_id = with_id or n
            else:
                without_id = without_id or n
            yield {c: _as_text(obj.get(c), c, f"{file}, line {n}") for c in columns}
    if n_rows == 0:
        raise UserError(f"{file}: file is empty; it needs one JSON object per line")
    if with_id and without_id:
        raise UserError(f"{file}, line {without_id}: no '{id_column}' (line {with_id} has one); "
                        "give every line an id, or none")
    missing = [c for c in columns if c != id_column and c not in keys]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)}; found {', '.join(list(keys)[:20]) or 'none'}; "
                        "name yours with --set data.article_column=NAME --set data.summary_column=NAME")


def _unwrap_user_error(e: BaseException) -> UserError | None:
    while e is not None:
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
    return None


def load_jsonl(path: Path, article: str, summary: str, id_column: str):
    """A JSON Lines file as a Dataset of the id (when the file has one), article and summary columns."""
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    columns = tuple(dict.fromkeys([id_column, article, summary]))  # a list would be split into shards
    st = path.stat()
    stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    kwargs = {"path": str(path), "columns": columns, "id_column": id_column, "stamp": stamp}
    try:
        with datasets_quiet():
            ds = datasets.Dataset.from_generator(
                _jsonl_rows, gen_kwargs=kwargs, fingerprint=cache_key("jsonl-v1", stamp, columns),
                features=datasets.Features({c: datasets.Value("string") for c in columns}))
    except Exception as e:  # noqa: BLE001 - the generator's UserError, or one line naming the file
        raise _unwrap_user_error(e) or UserError(f"cannot read {path} as JSON Lines: {first_line(e)}") from None
    if ds.data.column(id_column).null_count == len(ds):
        ds = ds.remove_columns(id_column)
    return ds
