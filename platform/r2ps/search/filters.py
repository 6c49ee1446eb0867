"""Search filters: which units a search may answer with, applied before the top-k cut.

`Filters(language=..., path=..., exclude=...)`, every part optional, all given must hold:

- `language`: the unit's language is one of these (`LANGUAGES`: r2ps.data.grammars' labels);
- `path`: the unit's file matches one of these globs;
- `exclude`: the unit's file matches none of these globs.

A unit without a path (the code of a corpus split, not of a source tree) matches no glob:
a `path` filter drops it, an `exclude` filter keeps it.

Globs are .gitignore lines as git reads them (pathspec's `GitIgnoreSpec`), over paths
relative to the indexed folder: `tests/**`, `**/*_test.go`, `*.py` (in any folder),
`src/` (everything under a folder named src), `/cmd/**` (at the root only). Left out,
so that a glob means what it says: `!` negations (use `exclude`), `#` comments, blank
lines, `\\` escapes and `[...]` ranges (git silently drops a bad range, and a filter that
silently matched nothing would read as "no results"). `glob_problem` is the rule and
`GLOB_PATTERN` states the same rule as a JSON Schema pattern for the OpenAPI document.

How a searcher applies them: `Searcher.search` (r2ps.search.searcher) keeps only the
positions `Filters.mask` allows and asks the first stage for more until k of them pass or
the index is exhausted, so a filter that leaves fewer than k units returns fewer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pathspec

from r2ps.data.grammars import LANGUAGE_LABEL

LANGUAGES = tuple(sorted(set(LANGUAGE_LABEL.values())))
FIELDS = ("language", "path", "exclude")

# Python's whitespace (what `str.strip` removes) as \uXXXX escapes, which ECMA-262, Python
# `re` and JSON Schema validators all read alike (their own `\s` classes differ from
# Python's: \x1c-\x1f, \x85, \ufeff): how a pattern of the OpenAPI document says "blank".
# (all of them lie below U+3001, the last being U+3000: scanning there, not to U+10FFFF,
# saves 50 ms of every `r2ps search`; tests/search/test_filters.py checks the bound)
SPACE_LIMIT = 0x3001
SPACE_ESCAPES = "".join(f"\\u{c:04x}" for c in range(SPACE_LIMIT) if chr(c).isspace())
_REFUSED_CHARS = "\\[]"  # escapes and ranges
_ANY = "[^\\\\\\[\\]]"  # a character a glob may hold
_SOLID = "[^" + SPACE_ESCAPES + "\\\\\\[\\]]"  # ... that is not whitespace
_FIRST = "[^#!/" + SPACE_ESCAPES + "\\\\\\[\\]]"  # ... that may start a glob
# Starts with an ordinary character; or with "/" or whitespace and holds a solid
# character later ("/" alone and blank globs match nothing in git).
GLOB_PATTERN = f"^(?:{_FIRST}{_ANY}*|[/{SPACE_ESCAPES}]{_ANY}*{_SOLID}{_ANY}*)$"


class FilterError(ValueError):
    """A filter that cannot be applied; `field` names it (`path[1]`, `language[0]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def glob_problem(glob: str) -> str | None:
    """Why `glob` is refused as a filter (module docstring), or None when it is a glob git
    reads as a pattern that matches paths."""
    if not isinstance(glob, str):
        return f"expected a string, got {type(glob).__name__}"
    if not glob.strip():
        return "a blank glob matches nothing"
    bad = sorted({c for c in glob if c in _REFUSED_CHARS})
    if bad:
        return f"{''.join(bad)!r} not supported: backslash escapes and [ranges] are left out"
    if glob[0] == "#":
        return "a glob starting with '#' is a comment in .gitignore"
    if glob[0] == "!":
        return "'!' negation is not supported: leave files out with exclude"
    if glob.rstrip() == "/":
        return "'/' alone matches nothing"
    try:  # what the rules above leave is a pattern to git; pathspec is the judge
        (pattern,) = _spec([glob]).patterns
    except ValueError as e:
        return f"not a gitignore pattern ({e})"
    return None if pattern.include else "git reads it as no pattern"


def _spec(globs: Sequence[str]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(globs)


@dataclass(frozen=True)
class Filters:
    """What a search may answer with (module docstring); empty parts filter nothing.

    Raises FilterError naming the field and item (`language[1]`, `path[0]`) for an unknown
    language or a refused glob (`glob_problem`). Hashable: a searcher caches its mask.
    """

    language: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                value = ()
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise FilterError(name, f"expected a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for i, lang in enumerate(self.language):
            if lang not in LANGUAGES:
                raise FilterError(
                    f"language[{i}]", f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}"
                )
        for name in ("path", "exclude"):
            for i, glob in enumerate(getattr(self, name)):
                problem = glob_problem(glob)
                if problem:
                    raise FilterError(f"{name}[{i}]", f"{glob!r}: {problem}")

    def __bool__(self) -> bool:
        return bool(self.language or self.path or self.exclude)

    @functools.cached_property
    def _include(self) -> pathspec.GitIgnoreSpec | None:
        return _spec(self.path) if self.path else None

    @functools.cached_property
    def _exclude(self) -> pathspec.GitIgnoreSpec | None:
        return _spec(self.exclude) if self.exclude else None

    def keeps_path(self, path: str | None) -> bool:
        """Whether a unit of file `path` (relative to the indexed folder, "/"-separated;
        None: a unit with no file) passes the `path` and `exclude` globs."""
        if not path:
            return self._include is None
        if self._include is not None and not self._include.match_file(path):
            return False
        return self._exclude is None or not self._exclude.match_file(path)

    def mask(self, paths: Sequence[str | None], languages: Sequence[str]) -> np.ndarray:
        """bool [N]: which of N units (their files and languages, in the same order) pass.

        Each distinct path is matched once (a file holds many units)."""
        if len(paths) != len(languages):
            raise ValueError(f"{len(paths)} paths but {len(languages)} languages")
        keep = np.ones(len(paths), dtype=bool)
        if self.language:
            wanted = set(self.language)
            keep &= np.fromiter((lang in wanted for lang in languages), bool, len(languages))
        if self.path or self.exclude:
            verdict: dict[str | None, bool] = {}
            for i, path in enumerate(paths):
                if keep[i]:
                    if path not in verdict:
                        verdict[path] = self.keeps_path(path)
                    keep[i] = verdict[path]
        return keep

    def to_dict(self) -> dict[str, list[str]]:
        """The parts given, as lists (what POST /search takes)."""
        return {name: list(getattr(self, name)) for name in FIELDS if getattr(self, name)}
