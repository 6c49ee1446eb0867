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

Tokenising is also what building costs (1.5 of 2 s for 15k units of laravel), so an index
is saved beside what it indexes (`cached`, `BM25.save` / `load`: bm25s's own files plus
the term counts) under a key hashed from the documents, the settings, bm25s's version and
this file's text: a saved index is loaded only for exactly the documents it was built
from, by the code that built it, and loads in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np

from r2ps.log import get_logger
from r2ps.ranking import top_k_of_scores

log = get_logger(__name__)

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


# The tokens of the documents of the last index built in this process, by document: a
# process that rebuilds it for a tree that changed (`r2ps index --watch`, a reader loading
# the next version) tokenises only the documents that changed.
_LAST_TOKENS: dict[str, list[str]] = {}


def _tokenize_all(documents: Sequence[str]) -> list[list[str]]:
    global _LAST_TOKENS
    last = _LAST_TOKENS
    tokens = [last[text] if text in last else tokenize(text) for text in documents]
    _LAST_TOKENS = dict(zip(documents, tokens, strict=True))
    return tokens


class BM25:
    """A BM25 index over a fixed list of documents (positions 0..N-1)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        self.n_docs = len(documents)
        tokens = _tokenize_all(documents)
        self._df: dict[str, int] = Counter(t for doc in tokens for t in set(doc))
        self._model = bm25s.BM25(k1=k1, b=b, method="lucene")
        if self.n_docs:
            self._model.index(tokens, show_progress=False)

    def save(self, folder: str | Path, key: str) -> None:
        """Write this index to `folder` (replaced whole, atomically) under `key`
        (`documents_key` of its documents), for `load`."""
        from r2ps.storage import atomic_path

        vocab = self._model.vocab_dict if self.n_docs else {}
        df = np.zeros(len(vocab), dtype=np.int64)  # by bm25s's term id
        for term, count in self._df.items():
            df[vocab[term]] = count
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            if self.n_docs:
                self._model.save(tmp, show_progress=False)
            np.save(tmp / _DF_FILE, df)
            meta = {"key": key, "n_docs": self.n_docs, "k1": self.k1, "b": self.b}
            (tmp / _META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: str | Path, key: str) -> BM25 | None:
        """The index `save` wrote to `folder` under `key`; None when there is none, it
        was saved under another key (other documents, settings or code), or it cannot
        be read."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META_FILE).read_text())
            if meta.get("key") != key:
                return None
            self = cls.__new__(cls)
            self.k1, self.b, self.n_docs = float(meta["k1"]), float(meta["b"]), meta["n_docs"]
            df = np.load(folder / _DF_FILE)
            if self.n_docs:
                self._model = bm25s.BM25.load(folder, mmap=False, show_progress=False)
            else:
                self._model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            vocab = self._model.vocab_dict if self.n_docs else {}
            self._df = {term: int(df[i]) for term, i in vocab.items() if df[i]}
            return self
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 (a damaged or half-replaced copy: rebuilt)
            log.warning("%s: cannot read the saved BM25 index (%s): rebuilding it", folder, e)
            return None

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


_META_FILE = "r2ps_bm25.json"  # the key, the settings, the number of documents
_DF_FILE = "df.npy"  # documents per term, by bm25s's term id


def documents_key(documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> str:
    """What a saved index must have been built from to stand for `BM25(documents, k1, b)`:
    a hash of the documents in order, the settings, bm25s's version and this module's text
    (the tokeniser)."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"\0{bm25s.__version__}\0{k1!r}\0{b!r}\0{len(documents)}".encode())
    for text in documents:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def cached(
    documents: Sequence[str], folder: str | Path | None, k1: float = 1.2, b: float = 0.75
) -> BM25:
    """`BM25(documents, k1, b)`: loaded from `folder` when saved there for these documents,
    else built and saved there (a folder that cannot be written is left as it is). No
    folder (or a URI): built."""
    if folder is None or "://" in str(folder):
        return BM25(documents, k1, b)
    key = documents_key(documents, k1, b)
    found = BM25.load(folder, key)
    if found is not None:
        return found
    built = BM25(documents, k1, b)
    try:
        built.save(folder, key)
    except Exception as e:  # noqa: BLE001 (a cache: a search never fails for it)
        log.info("%s: BM25 index not saved (%s)", folder, e)
    return built
