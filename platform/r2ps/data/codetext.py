"""Code text normalisation: what makes two functions "the same code".

Two codes are duplicates when they have the same Python tokens once comments, blank
lines and indentation are ignored. Docstrings are kept by `normalize_code` (a docstring
is part of a code's text) and dropped by `strip_docstrings`, which is how a pool whose
codes carry docstrings (CoSQA) is matched against corpus codes that had theirs removed.
Code ids are a hash of the normalised text, so they are stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import io
import re
import tokenize

_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
_COMMENT_RE = re.compile(r"#[^\n]*")
_WS_RE = re.compile(r"\s+")


def _tokens(code: str) -> list[tokenize.TokenInfo] | None:
    try:
        return list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def _docstring_positions(toks: list[tokenize.TokenInfo]) -> set[int]:
    """Indices of STRING tokens that are docstrings: first statement of a block or file."""
    out: set[int] = set()
    significant = [i for i, t in enumerate(toks) if t.type not in (tokenize.COMMENT, tokenize.NL)]
    for k, i in enumerate(significant):
        if toks[i].type != tokenize.STRING:
            continue
        prev = toks[significant[k - 1]].type if k > 0 else tokenize.ENCODING
        nxt = toks[significant[k + 1]].type if k + 1 < len(significant) else tokenize.ENDMARKER
        if prev in (tokenize.INDENT, tokenize.ENCODING) and nxt in (
            tokenize.NEWLINE,
            tokenize.ENDMARKER,
        ):
            out.add(i)
    return out


def normalize_code(code: str, strip_docstrings: bool = False) -> str:
    """The code's tokens joined by single spaces, without comments or layout.

    Falls back to a regex (drop `#` comments, collapse whitespace) for text that does
    not tokenize as Python, so every input has a normal form.
    """
    toks = _tokens(code)
    if toks is None:
        return _WS_RE.sub(" ", _COMMENT_RE.sub("", code)).strip()
    drop = _docstring_positions(toks) if strip_docstrings else set()
    return " ".join(t.string for i, t in enumerate(toks) if t.type not in _SKIP and i not in drop)


def content_hash(text: str, prefix: str = "") -> str:
    return prefix + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def code_id(code: str) -> str:
    """Stable id of a code: hash of its normalised text (docstrings kept)."""
    return content_hash(normalize_code(code), "c")


def code_match_key(code: str) -> str:
    """Docstring-insensitive id, used to find a corpus code inside an evaluation pool."""
    return content_hash(normalize_code(code, strip_docstrings=True), "c")


def query_key(query: str) -> str:
    """The identity of a query's text, whatever its id: whitespace runs count as one space.

    Ids are namespaced (two CodeSearchNet records with one docstring get two ids), so the
    false-negative guard, in-batch masking and gold sets key on this, not on the id.
    """
    return " ".join(query.split())


def query_id(query: str, namespace: str = "") -> str:
    """Stable id of a query text (namespaced, so two data sets never collide)."""
    return content_hash(namespace + "\x00" + query_key(query), "q")
