"""Okapi BM25 over identifier-split tokens: the baseline a user has without any model.

Code and queries are tokenised the same way: split on anything that is not a letter or
a digit, then split identifiers at snake_case and camelCase boundaries, lowercase
(`readJSONFile` -> read, json, file). Without the identifier split a query word like
"json" would never match `load_json` (METHOD.md section 7 measured MRR 33.3 on CoSQA
dev this way).

Scoring is the classic Okapi formula with the non-negative idf of Lucene,
`log(1 + (N - df + 0.5) / (df + 0.5))`, over an inverted index held as numpy arrays, so
one query costs time proportional to the postings of its terms, not to the pool.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[A-Za-z0-9]+")
# Boundaries inside an identifier: "HTTPServer" -> HTTP, Server; "parse2D" -> parse, 2, D.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercased identifier parts of `text`, in order (duplicates kept: they are term counts)."""
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(part.lower() for part in _PART.findall(word))
    return out


class BM25:
    """An Okapi BM25 index over a fixed list of documents (positions 0..N-1)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        self.n_docs = len(documents)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths = np.zeros(self.n_docs, dtype=np.float64)
        for doc, text in enumerate(documents):
            counts = Counter(tokenize(text))
            lengths[doc] = sum(counts.values())
            for term, tf in counts.items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(doc)
                tfs.append(tf)
        avg = float(lengths.mean()) if self.n_docs and lengths.mean() > 0 else 1.0
        # The length normaliser of each document, computed once.
        self._norm = self.k1 * (1.0 - self.b + self.b * lengths / avg)
        self._postings = {
            term: (np.asarray(docs, dtype=np.int64), np.asarray(tfs, dtype=np.float64))
            for term, (docs, tfs) in postings.items()
        }

    def idf(self, term: str) -> float:
        df = len(self._postings[term][0]) if term in self._postings else 0
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query`, float32 [N] (0 where no term matches)."""
        out = np.zeros(self.n_docs, dtype=np.float64)
        for term, qtf in Counter(tokenize(query)).items():
            if term not in self._postings:
                continue
            docs, tf = self._postings[term]
            out[docs] += qtf * self.idf(term) * tf * (self.k1 + 1.0) / (tf + self._norm[docs])
        return out.astype(np.float32)

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64 [k'], scores float32 [k']) best first, k' = min(k, N).

        Equal scores keep pool order (a stable sort), so the ranking is deterministic
        and a gold code tied with many zero-score codes gets no lucky rank.
        """
        s = self.scores(query)
        order = np.argsort(-s, kind="stable")[: min(k, self.n_docs)]
        return order.astype(np.int64), s[order]
