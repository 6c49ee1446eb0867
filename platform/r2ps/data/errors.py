"""Bad input is never lost and never silently skipped.

A reader that meets a malformed record raises `BadRecord`, which names the file, the
line and the field. With `skip_bad=True` it records the same facts in a `SkipLog`
instead and goes on; the job prints the log's summary (how many, where, why) and
writes it next to its output.

Text UTF-8 cannot encode is one kind of bad record, checked here for every place text
enters r2ps: a Python `str` may hold lone surrogates (a JSON `"\\ud800"` escape, bytes
decoded with `surrogateescape`, a codec such as `unicode_escape` or `utf-7`) that Arrow,
Parquet, hashes and tokenizers all refuse, and an Arrow string column read from Parquet
may hold bytes that are not UTF-8 (Arrow does not check them on reading). `check_text`
and `check_utf8` turn either into a BadRecord at the boundary, where file and line are
known, instead of a UnicodeError deep inside pyarrow or a tokenizer.

The field checks at the end (`required_str`, `opt_str`, `opt_tokens`, `nonempty`) are
what every reader of a parsed record (a JSON line, a Parquet row, a CoSQA record) calls:
each returns the field's text or raises BadRecord naming file, line and field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

# The only characters of a Python str that UTF-8 cannot encode. U+DC80-U+DCFF are what
# `surrogateescape` turns an undecodable byte into (the byte is the low 8 bits).
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def unencodable(text: str, start: int = 0, end: int | None = None) -> tuple[int, str] | None:
    """(index, why) of the first character of `text[start:end]` UTF-8 cannot encode, or
    None when it has none. `why` names the byte a surrogate escape stands for
    ("byte 0xff is not UTF-8"), else the code point ("U+D800 is a lone surrogate ...")."""
    found = _SURROGATE.search(text, start, len(text) if end is None else end)
    if found is None:
        return None
    point = ord(found.group())
    if point in _ESCAPED_BYTES:
        return found.start(), f"byte 0x{point - 0xDC00:02x} is not UTF-8"
    return found.start(), f"U+{point:04X} is a lone surrogate, which UTF-8 cannot encode"


def printable(text: str) -> str:
    """`text` with what UTF-8 cannot encode written as escapes (`bad\\xffname.py`,
    `\\ud800`), so an error message or a stored name never fails on what it reports."""

    def escape(m: re.Match) -> str:
        point = ord(m.group())
        return f"\\x{point - 0xDC00:02x}" if point in _ESCAPED_BYTES else f"\\u{point:04x}"

    return _SURROGATE.sub(escape, text)


def replace_unencodable(text: str, by: str = "\ufffd") -> str:
    """`text` with every character UTF-8 cannot encode replaced by `by` (U+FFFD, as a
    decoder's `errors="replace"` would)."""
    return _SURROGATE.sub(by, text)


def check_text(value: str, file: str | Path, line: int | None, field: str | None) -> str:
    """`value`, or BadRecord(file, line, field) when UTF-8 cannot encode it (saying which
    character, counted from 1)."""
    found = unencodable(value)
    if found is not None:
        raise BadRecord(file, line, field, f"{found[1]} (character {found[0] + 1})")
    return value


def utf8_errors(column: pa.Array | pa.ChunkedArray) -> dict[int, str]:
    """{row (0-based): why} for each value of an Arrow string column whose bytes are not
    UTF-8 ({} for a column of another type). Arrow's own check runs first (fast); only a
    column that fails it is decoded value by value to find the rows."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return {}
    try:
        column.validate(full=True)
        return {}
    except pa.ArrowInvalid:
        pass
    bad = {}
    for row, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
        try:
            if raw is not None:
                raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[row] = f"byte 0x{raw[e.start]:02x} is not UTF-8 (byte {e.start + 1})"
    return bad


def check_utf8(
    column: pa.Array | pa.ChunkedArray, file: str | Path, field: str, first_row: int = 1
) -> None:
    """Raise BadRecord naming the first row (numbered from `first_row`) of an Arrow string
    column whose bytes are not UTF-8."""
    bad = utf8_errors(column)
    if bad:
        row = min(bad)
        raise BadRecord(file, first_row + row, field, bad[row])


class BadRecord(ValueError):
    """A malformed input record: `file:line: field: message`.

    The parts are kept printable (`printable`): a file named in bytes that are not UTF-8,
    or a message quoting bad text, can still be stored, logged and written as JSON.
    """

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line = printable(str(file)), line
        self.field = printable(field) if field is not None else None
        self.message = printable(message)
        where = self.file + (f":{line}" if line is not None else "")
        what = f"field {self.field!r}: " if self.field else ""
        super().__init__(f"{where}: {what}{self.message}")

    def __reduce__(self):
        # rebuilt from its parts when pickled (Ray ships a task's error to the driver)
        return BadRecord, (self.file, self.line, self.field, self.message)


@dataclass
class Skipped:
    file: str
    line: int | None
    field: str | None
    message: str


@dataclass
class SkipLog:
    """What a lenient (`skip_bad=True`) read left out, and where."""

    skipped: list[Skipped] = field(default_factory=list)

    def add(self, err: BadRecord) -> None:
        self.skipped.append(Skipped(err.file, err.line, err.field, err.message))

    def extend(self, other: SkipLog) -> None:
        self.skipped.extend(other.skipped)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        if not self.skipped:
            return "skipped: none"
        by_file = Counter(s.file for s in self.skipped)
        by_field = Counter(s.field or "(record)" for s in self.skipped)
        lines = [f"skipped {len(self.skipped)} bad record(s) in {len(by_file)} file(s)"]
        lines += [f"  {f}: {n}" for f, n in by_file.most_common(limit)]
        lines.append("  by field: " + ", ".join(f"{k}={v}" for k, v in by_field.most_common()))
        lines += [
            f"  e.g. {s.file}:{s.line}: {s.field or '(record)'}: {s.message}"
            for s in self.skipped[:limit]
        ]
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        """One JSON object per skipped record, so nothing that was left out is lost."""
        with open(path, "w") as f:
            for s in self.skipped:
                f.write(json.dumps(asdict(s)) + "\n")


def handle(err: BadRecord, skip_log: SkipLog | None) -> None:
    """Raise `err` in strict mode; record it when a skip log is given."""
    if skip_log is None:
        raise err
    skip_log.add(err)


# ---------------------------------------------------------------- a parsed record's fields


def type_name(value: Any) -> str:
    """JSON's name for the type of a parsed value, for error messages."""
    return {dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def opt_str(rec: dict, key: str, file: str | Path, line: int | None) -> str | None:
    """`rec[key]` if present; present-but-not-a-string (or text UTF-8 cannot encode) is an
    error, never a fallback."""
    if key not in rec:
        return None
    if not isinstance(rec[key], str):
        raise BadRecord(file, line, key, f"expected a string, got {type_name(rec[key])}")
    return check_text(rec[key], file, line, key)


def opt_tokens(rec: dict, key: str, file: str | Path, line: int | None) -> str | None:
    """A token list joined by spaces, if present; anything but a list of strings is an error."""
    if key not in rec:
        return None
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRecord(file, line, key, f"expected a list of strings, got {type_name(value)}")
    return check_text(" ".join(value), file, line, key)


def nonempty(text: str, key: str, file: str | Path, line: int | None) -> str:
    """`text`, unless it is only whitespace: then BadRecord (field `key` is empty)."""
    if not text.strip():
        raise BadRecord(file, line, key, "is empty")
    return text


def required_str(rec: dict, key: str, file: str | Path, line: int | None) -> str:
    """`rec[key]`, a non-empty string; missing, null, another type or empty is BadRecord."""
    if key not in rec:
        raise BadRecord(file, line, key, "missing")
    if rec[key] is None:
        raise BadRecord(file, line, key, "is null")
    return nonempty(opt_str(rec, key, file, line) or "", key, file, line)
