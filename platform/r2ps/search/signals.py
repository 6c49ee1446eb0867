"""Repository ranking signals: what a user expects of search over their own repository,
applied to the fused first stage's candidates (`retrieval: repo`, after `fusion.blend`).

A query in one's own repository is answered by a definition, a file or a folder the user
half remembers, not only by code that reads like the query. Each signal below is a small
pure function of the candidates' scores (float [m], higher is better, >= 0 as `blend`
gives them), their units' metadata (the path relative to the indexed root, the qualified
symbol) and the query; `apply_signals` runs them in this order:

1. `demote_tests`: test files' units x0.3, unless the query asks for tests;
2. `path_match`: query words that name the file or its folder lift its units;
3. `symbol_definition`: a query that is (or holds) an identifier lifts its definition;
4. `file_coherence`: a file with many good candidates lifts its best one;
5. `saturate_files`: each further unit of a file already listed counts half as much, so
   the top 10 spread over files.

Boosts are fractions of the best candidate's score at that step (`top`), so they mean the
same whatever the scale of the fused score. The settings (`RankingSignals`) were chosen on
semble's dev split, never its test split; docs/REPO_SEARCH.md has what each one moved.
They need unit paths and symbols, so they act only in repository search; a corpus
without locations (CodeSearchNet, CoSQA) is never ranked through here.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pathspec

from r2ps.config import ConfigError
from r2ps.finite import check_finite
from r2ps.ranking import tie_order
from r2ps.search.bm25 import tokenize


@dataclass
class RankingSignals:
    """The signals' settings; the defaults are the best measured on semble's dev split.

    Each signal is off at its neutral value (a factor or decay of 1, a weight of 0), and
    `enabled: false` switches all of them off at once (the plain fused order).
    """

    enabled: bool = True
    test_factor: float = 0.3  # test files' scores x this (1: off)
    path_weight: float = 0.75  # x top x fraction of query words naming the file (0: off)
    symbol_weight: float = 1.0  # x top for the definition of a symbol the query names (0: off)
    symbol_file_factor: float = 1.5  # x that when the file is named after the symbol too
    embedded_symbol_factor: float = 0.5  # x that when the identifier is inside a sentence
    coherence_weight: float = 0.2  # x top x file's score sum / the best file's (0: off)
    file_decay: float = 0.5  # the j-th further unit of a file x decay^j (1: off)

    def __post_init__(self) -> None:
        checks = {
            "test_factor": 0.0 <= self.test_factor <= 1.0,
            "path_weight": self.path_weight >= 0.0,
            "symbol_weight": self.symbol_weight >= 0.0,
            "symbol_file_factor": self.symbol_file_factor >= 0.0,
            "embedded_symbol_factor": self.embedded_symbol_factor >= 0.0,
            "coherence_weight": self.coherence_weight >= 0.0,
            "file_decay": 0.0 <= self.file_decay <= 1.0,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"RankingSignals: invalid {', '.join(bad)} (factors and decay in [0, 1], "
                "weights >= 0)"
            )

    @classmethod
    def off(cls) -> RankingSignals:
        """Every signal off: `apply_signals` returns the fused scores as they are."""
        return cls(enabled=False)


# ------------------------------------------------------------------ the query


# Function words that say nothing about which file is meant ("how does the app ..."); words
# of two letters or fewer are dropped anyway.
STOPWORDS = frozenset(
    {
        "and", "are", "can", "does", "for", "from", "has", "have", "how", "into", "its",
        "not", "should", "that", "the", "this", "was", "what", "when", "where", "which",
        "who", "why", "will", "with",
    }
)  # fmt: skip
# Words of a query that asks for tests (identifier parts: "TestClient" holds "test").
TEST_WORDS = frozenset({"test", "tests", "testing", "spec", "specs"})
# How qualified names join their parts: Python/JS/Java `a.b`, C++/Ruby/PHP `A::B`,
# PHP `A\B` and `$a->b`. Units' symbols are written with "." and PHP's "\".
_SEPARATOR = r"(?:::|->|\\|\.)"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_QUALIFIED = re.compile(rf"{_IDENT}(?:{_SEPARATOR}{_IDENT})*")
# A whole query that is one identifier: qualified (a.b, A::B), private (_x), with an
# inner capital or underscore (fooBar, FooBar, foo_bar) or capitalised (Foo). A plain
# lower-case word ("routing") is a word, not an identifier.
_LOOKS_LIKE_SYMBOL = re.compile(
    rf"{_IDENT}(?:{_SEPARATOR}{_IDENT})+|_[A-Za-z0-9_]*|[A-Za-z][A-Za-z0-9]*[A-Z_][A-Za-z0-9_]*"
    r"|[A-Z][A-Za-z0-9]*"
)
# An identifier inside a sentence: camelCase or PascalCase with two or more humps
# ("where is parseArgs called", "the QueryBuilder"); capitalised prose words are not.
_EMBEDDED_SYMBOL = re.compile(
    r"\b(?:[A-Z][a-z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*|[a-z][A-Za-z0-9]*[A-Z][A-Za-z0-9]+)\b"
)


def query_words(query: str) -> frozenset[str]:
    """The query's content words, as identifier parts: lowercased, stopwords and words of
    two letters or fewer dropped ("How are routes registered?" -> routes, registered)."""
    return frozenset(w for w in tokenize(query) if len(w) > 2 and w not in STOPWORDS)


def asks_for_tests(query: str) -> bool:
    """Whether the query mentions tests or specs, as a word or an identifier part."""
    return not TEST_WORDS.isdisjoint(tokenize(query))


def symbol_name(symbol: str | None) -> str:
    """The last part of a qualified symbol: `Illuminate\\Cache\\Repository.get` -> `get`;
    '' for none."""
    return re.split(_SEPARATOR, symbol)[-1] if symbol else ""


def query_symbols(query: str) -> tuple[frozenset[str], bool]:
    """(names, whole): the symbol names the query asks for, and whether the whole query is
    one identifier (True) or they are identifiers inside a sentence (False). A name is
    the last part of a qualified one (`Flask.route` -> `route`); case is kept."""
    text = query.strip()
    if _LOOKS_LIKE_SYMBOL.fullmatch(text):
        return frozenset(symbol_name(m) for m in _QUALIFIED.findall(text)), True
    return frozenset(symbol_name(m) for m in _EMBEDDED_SYMBOL.findall(text)), False


# ------------------------------------------------------------------ the unit


# Test files and folders of the six languages (+ TypeScript), as .gitignore patterns: a
# pattern without "/" matches a name at any depth, "x/" a folder anywhere.
TEST_PATTERNS = (
    "test/", "tests/", "testing/", "__tests__/", "spec/",
    "test_*.py", "*_test.py",  # pytest
    "*_test.go",  # go test
    "*_test.rb", "*_spec.rb",  # minitest, RSpec
    "*Test.java", "*Tests.java",  # JUnit
    "*Test.php",  # PHPUnit
    "*.test.[jt]s", "*.test.[jt]sx", "*.spec.[jt]s", "*.spec.[jt]sx",  # Jest, Vitest, Mocha
)  # fmt: skip
_TESTS = pathspec.GitIgnoreSpec.from_lines(TEST_PATTERNS)


@functools.lru_cache(maxsize=1 << 16)
def is_test_path(path: str) -> bool:
    """Whether `path` (relative to the indexed root, "/"-separated) is a test file or lies
    in a test folder (TEST_PATTERNS)."""
    return _TESTS.match_file(path)


@functools.lru_cache(maxsize=1 << 16)
def file_words(path: str) -> frozenset[str]:
    """The identifier parts of a file's stem and of its folder's name, lowercased:
    `src/routing/url_map.py` -> url, map, routing."""
    p = PurePosixPath(path)
    return frozenset(tokenize(p.stem)) | frozenset(tokenize(p.parent.name))


def _plain(name: str) -> str:
    return name.replace("_", "").lower()


def named_after(path: str, name: str) -> bool:
    """Whether the file is named after `name`, case and underscores aside
    (`query_builder.py`, `QueryBuilder.php` for QueryBuilder)."""
    return bool(name) and _plain(PurePosixPath(path).stem) == _plain(name)


class SymbolTable:
    """Where each symbol name is defined: the units (positions 0..N-1) whose symbol's last
    part is that name. A first stage of its own for `retrieval: repo`: the definition a
    query names is a candidate even when neither BM25 nor the dense list found it."""

    def __init__(self, symbols: Sequence[str | None]) -> None:
        self._units: dict[str, list[int]] = {}
        for i, symbol in enumerate(symbols):
            if name := symbol_name(symbol):
                self._units.setdefault(name, []).append(i)

    def definitions(self, query: str) -> np.ndarray:
        """int64 [d]: the positions of the units defining a symbol `query` names
        (`query_symbols`), in position order."""
        names, _ = query_symbols(query)
        found = sorted(i for name in names for i in self._units.get(name, ()))
        return np.array(found, dtype=np.int64)


# ------------------------------------------------------------------ the signals


def _scores(scores: np.ndarray, *columns: Sequence) -> np.ndarray:
    s = np.array(scores, dtype=np.float64)  # a copy: the signals never change their input
    if s.ndim != 1 or any(len(c) != len(s) for c in columns):
        raise ValueError(
            f"scores {s.shape} and unit metadata of lengths {[len(c) for c in columns]} "
            "must be [m] each"
        )
    check_finite(s, "candidate scores")
    return s


def _top(s: np.ndarray) -> float:
    return float(s.max()) if s.size else 0.0


def demote_tests(
    scores: np.ndarray, paths: Sequence[str], query: str, factor: float = 0.3
) -> np.ndarray:
    """Scores [m] with test files' units (`is_test_path`) multiplied by `factor`, unless
    the query asks for tests (`asks_for_tests`).

    Why: a test exercises the very function a query describes, in the same words, so
    tests crowd out the code itself (26-29% of the dense top 10 in semble's Go
    repositories were `*_test.go`); a user who wants tests says so.
    """
    s = _scores(scores, paths)
    if factor == 1.0 or asks_for_tests(query):
        return s
    tests = np.array([is_test_path(p) for p in paths], dtype=bool)
    return np.where(tests, s * factor, s)


def path_match(
    scores: np.ndarray, paths: Sequence[str], query: str, weight: float = 0.75
) -> np.ndarray:
    """Scores [m] + `weight * top * f`, f the fraction of the query's content words
    (`query_words`) that are words of the unit's file stem or folder name (`file_words`).

    Why: people name the module they mean ("how does the router match routes" ->
    router.go); the file name is the one place a repository says what a file is about,
    and a unit's own text may never repeat it.
    """
    s = _scores(scores, paths)
    words = query_words(query)
    if weight == 0.0 or not words:
        return s
    fraction = np.array([len(words & file_words(p)) / len(words) for p in paths])
    return s + weight * _top(s) * fraction


def symbol_definition(
    scores: np.ndarray,
    paths: Sequence[str],
    symbols: Sequence[str | None],
    query: str,
    weight: float = 1.0,
    file_factor: float = 1.5,
    embedded_factor: float = 0.5,
) -> np.ndarray:
    """Scores [m] + `weight * top` for the units that define a symbol the query names
    (`query_symbols`; the unit's `symbol_name` equal, case kept), x `file_factor` when its
    file is named after the symbol too (`named_after`: the class's own file, not a
    subclass's method of the same name), x `embedded_factor` when the identifier sits in
    a sentence rather than being the whole query.

    Why: a query that is an identifier asks where it is defined, and its callers and
    tests, which mention it as often, must not outrank the definition.
    """
    s = _scores(scores, paths, symbols)
    names, whole = query_symbols(query)
    if weight == 0.0 or not names:
        return s
    lift = weight * _top(s) * (1.0 if whole else embedded_factor)
    for i, (path, symbol) in enumerate(zip(paths, symbols, strict=True)):
        name = symbol_name(symbol)
        if name in names:
            s[i] += lift * (file_factor if named_after(path, name) else 1.0)
    return s


def file_coherence(scores: np.ndarray, paths: Sequence[str], weight: float = 0.2) -> np.ndarray:
    """Scores [m] + `weight * top * sum(file) / max_file sum(file)` for each file's best
    candidate (by the tie rule), sum(file) the sum of its candidates' positive scores.

    Why: a file many candidates come from is likely the one about the query (an
    "architecture" question is answered by a module, not one function of it); lifting
    its best unit puts that file high without listing all of it.
    """
    s = _scores(scores, paths)
    if weight == 0.0 or not s.size:
        return s
    sums: Counter[str] = Counter()
    for path, score in zip(paths, s, strict=True):
        sums[path] += max(score, 0.0)
    most = max(sums.values())
    if most <= 0.0:
        return s
    top, seen = _top(s), set()
    out = s.copy()
    for i in tie_order(s):
        if paths[i] not in seen:
            seen.add(paths[i])
            out[i] += weight * top * sums[paths[i]] / most
    return out


def saturate_files(scores: np.ndarray, paths: Sequence[str], decay: float = 0.5) -> np.ndarray:
    """Scores [m] where, going down the ranking (the tie rule), the j-th further unit of a
    file already listed (j = 1, 2, ...) is multiplied by `decay ** j`.

    Why: a class and each of its methods are separate units, so one file can fill the top
    10 (4.75 distinct files on average in semble's dev split); the answer is a place in
    the repository, and the second-best file is worth more than the same file again.
    The order is greedy: a unit decays by the units of its file ranked above it before
    any decay.
    """
    s = _scores(scores, paths)
    if decay == 1.0:
        return s
    listed: Counter[str] = Counter()
    out = s.copy()
    for i in tie_order(s):
        out[i] = s[i] * decay ** listed[paths[i]]
        listed[paths[i]] += 1
    return out


def apply_signals(
    scores: np.ndarray,
    paths: Sequence[str],
    symbols: Sequence[str | None],
    query: str,
    signals: RankingSignals,
) -> np.ndarray:
    """The candidates' final scores, float64 [m]: the signals in the module's order.

    scores: the fused first-stage scores [m] (finite, >= 0: `fusion.blend`), in the
    candidates' order, which breaks ties; paths, symbols: each candidate's unit (paths
    relative to the indexed root). Order the result with `r2ps.ranking.tie_order`. With
    `signals.enabled` false the scores come back unchanged. ValueError on lengths that
    differ or a NaN/inf score.
    """
    s = _scores(scores, paths, symbols)
    if not signals.enabled:
        return s
    s = demote_tests(s, paths, query, signals.test_factor)
    s = path_match(s, paths, query, signals.path_weight)
    s = symbol_definition(
        s,
        paths,
        symbols,
        query,
        signals.symbol_weight,
        signals.symbol_file_factor,
        signals.embedded_symbol_factor,
    )
    s = file_coherence(s, paths, signals.coherence_weight)
    return saturate_files(s, paths, signals.file_decay)
