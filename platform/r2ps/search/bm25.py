"""Okapi BM25 over identifier-split tokens: the lexical baseline and first stage.

Scoring is `bm25s` (Lù 2024, a maintained sparse-matrix BM25) with Lucene's variant:
idf `log(1 + (N - df + 0.5) / (df + 0.5))`, term weight `tf / (tf + k1 (1 - b + b L / avgL))`
(Lucene drops Robertson's constant factor k1 + 1, which changes no ranking).

What bm25s does not know is code, so tokenising is ours: code and queries are split on
anything that is not a letter or a digit (any script: `größe`, `数据` are kept), then
identifiers are split at snake_case, camelCase and letter/digit boundaries and
lowercased (`readJSONFile` -> read, json, file). Without the identifier split a query
word like "json" would never match `load_json` (METHOD.md section 7 measured MRR 33.3
on CoSQA dev this way).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import bm25s
import numpy as np

from r2ps.ranking import top_k_of_scores

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script
# Boundaries inside an ASCII identifier: "HTTPServer" -> HTTP, Server; "parse2D" -> parse, 2, D.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _split_identifier(word: str) -> list[str]:
    """The parts of one letter/digit run; the regex for ASCII, a scan for other scripts."""
    if word.isascii():
        return _PART.findall(word)
    parts, start = [], 0
    for i in range(1, len(word)):
        a, b = word[i - 1], word[i]
        after = word[i + 1] if i + 1 < len(word) else ""
        if (
            a.isdigit() != b.isdigit()
            or (a.islower() and b.isupper())
            or (a.isupper() and b.isupper() and after.islower())
        ):
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return parts


def tokenize(text: str) -> list[str]:
    """Lowercased identifier parts of `text`, in order (duplicates kept: they are term counts)."""
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(part.lower() for part in _split_identifier(word))
    return out


class BM25:
    """A BM25 index over a fixed list of documents (positions 0..N-1)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        self.n_docs = len(documents)
        tokens = [tokenize(text) for text in documents]
        self._df = Counter(t for doc in tokens for t in set(doc))
        self._model = bm25s.BM25(k1=k1, b=b, method="lucene")
        if self.n_docs:
            self._model.index(tokens, show_progress=False)

    def idf(self, term: str) -> float:
        df = self._df.get(term, 0)
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query`, float32 [N] (0 where no term matches).
        A query term given twice counts twice."""
        terms = [t for t in tokenize(query) if t in self._df]
        if not terms or not self.n_docs:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._model.get_scores(terms), dtype=np.float32)

    def top_k(
        self, query: str, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64 [k'], scores float32 [k']) best first, k' = min(k, N).

        `among`: int positions in ascending order (a search filter's): only those are
        ranked, and N is their number. Scores equal within float noise keep pool order
        (`r2ps.ranking`'s tie rule), so the ranking is the same on every CPU and a gold code
        tied with many zero-score codes gets no lucky rank.
        """
        scores = self.scores(query)
        if among is not None:
            among = np.asarray(among, dtype=np.int64)
            top, positions = top_k_of_scores(scores[among][None, :], k)
            return among[positions[0]], top[0]
        top, positions = top_k_of_scores(scores[None, :], k)
        return positions[0], top[0]
