"""Bad input is never lost and never silently skipped.

A reader that meets a malformed record raises `BadRecord`, which names the file, the
line and the field. With `skip_bad=True` it records the same facts in a `SkipLog`
instead and goes on; the job prints the log's summary (how many, where, why) and
writes it next to its output.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


class BadRecord(ValueError):
    """A malformed input record: `file:line: field: message`."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field, self.message = str(file), line, field, message
        where = self.file + (f":{line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{message}")


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
