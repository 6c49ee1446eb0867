"""Code units of a source file through tree-sitter: every function, method and class
(and, on request, the file's module-level code).

`extract_units(data, path)` parses one file's bytes with the grammar its extension
selects (`r2ps.data.grammars`) and returns one `Unit` per function, method and class,
documented or not, nested ones included:

- `path` as given (relative to the source root), `start_line` / `end_line` 1-based and
  inclusive, so `source_lines[start_line - 1 : end_line]` is exactly `code` (a module
  unit's: with the other units' lines blank);
- `code` starts at the unit's doc comment when it has one above it (Go, Java, JS/TS,
  PHP, Ruby), or at its decorators (Python), and ends with the unit;
- `symbol`: the qualified name, enclosing classes and functions joined by dots
  (`Circle.Area`, `Geo.Point.dist`, `outer.inner`), after the PHP namespace that covers
  the unit (`App\\Models\\User.save`);
- `kind`: function, method (a function directly inside a class) or class;
- `doc`: the doc comment without its comment markers (None without one).

More on request (the repository index asks for the first two, `r2ps.repo.units`; the
corpus builder for none): `type_units` makes a language's other type declarations units
of kind class (TS interfaces, type aliases, enums; Go's other named types; Java
annotation types); `module_unit` adds one unit of kind `module` per file: the code
outside every other unit (docstring, imports, top-level statements and declarations,
without a leading license header), the whole file when it defines nothing, so a file
can be the answer. Its lines run from the first to the last line of that code, and its
`code` is those lines with the other units' lines blank. `detached_docs` attaches a
`/** */` comment separated from its definition by blank lines only.

Syntax errors do not stop a file: tree-sitter recovers (the units around an error are
still found) and the result says on which lines it found `ERROR` / missing nodes. Bytes
that do not decode (as UTF-8, or a Python file's PEP 263 encoding) are replaced by
U+FFFD, and the result names the first bad line: nothing raises for a bad file.

`pairs_from_units` turns units into CodeSearchNet-style (summary, code) pairs for the
corpus builder: the doc comment's summary is the query, the function without its doc
comment is the code, with CodeSearchNet's filters (Husain et al. 2019, section 2.1).
"""

from __future__ import annotations

import codecs
import inspect
import io
import re
import textwrap
import tokenize
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from r2ps.data.errors import replace_unencodable, unencodable
from r2ps.data.grammars import LANGUAGE_LABEL, Grammar, grammar_for
from r2ps.data.pysource import ExtractConfig, docstring_summary

ANONYMOUS = "<anonymous>"
_INLINE_TAG_RE = re.compile(r"\{@(?:link|linkplain|code|literal|see)\s+([^}\s]*)[^}]*\}")
_HTML_TAG_RE = re.compile(r"</?[a-zA-Z][^>]*>")
_CONSTRUCTORS = {"constructor", "__construct", "initialize"}
# A comment that is a file's header (its license, its overview), not a definition's doc.
FILE_HEADER = re.compile(
    r"@(?:file|fileoverview|overview|module|license|copyright|preserve)\b"
    r"|\bcopyright\b|\blicen[cs]ed?\b",
    re.IGNORECASE,
)


@dataclass
class Unit:
    """One function, method or class of a source file."""

    path: str
    language: str
    symbol: str
    kind: str  # function | method | class
    start_line: int  # 1-based, first line of `code` (its doc comment or decorator)
    end_line: int  # 1-based, inclusive
    def_line: int  # 1-based line of the definition itself (after any doc comment)
    code: str
    doc: str | None


@dataclass
class FileUnits:
    """What one file gave: its units, and what went wrong on the way (never raised)."""

    path: str
    language: str
    units: list[Unit] = field(default_factory=list)
    error_lines: list[int] = field(default_factory=list)  # lines with ERROR / missing nodes
    undecodable_line: int | None = None  # first line with bytes that did not decode
    encoding: str = "utf-8"

    def rows(self) -> list[dict]:
        return [asdict(u) for u in self.units]


# ------------------------------------------------------------------ decoding


def is_utf16(data: bytes) -> bool:
    """Whether `data` starts with a UTF-16 byte order mark (Windows tools write these)."""
    return data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def unix_newlines(data: bytes) -> bytes:
    """`data` with `\\r\\n` and a lone `\\r` (classic Mac OS) as `\\n`: the line ends Python's
    universal newlines and editors count."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def decode_source(data: bytes, grammar: Grammar) -> tuple[str, str, int | None]:
    """(text with `\\n` newlines, encoding, first undecodable line or None).

    A UTF-16 byte order mark decides first; then Python files follow PEP 263 (a coding
    cookie, else UTF-8) and the others are read as UTF-8 (a BOM is dropped). Bytes that do
    not decode become U+FFFD, and so do lone surrogates that a cookie's codec can give
    (`unicode_escape` reads `\\ud800` as one): the text is always UTF-8 encodable.
    `\\r\\n` and a lone `\\r` (classic Mac OS) both end a line, as in Python's universal
    newlines and editors, so unit line numbers are the lines a reader sees.
    """
    encoding = "utf-8-sig"
    if is_utf16(data):
        encoding = "utf-16"  # the BOM says which byte order; it is dropped
    elif grammar.name == "python":
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError:
            encoding = "utf-8-sig"  # a bad cookie: read as UTF-8, bad bytes replaced
    bad_line = None
    try:
        text = data.decode(encoding)
    except (UnicodeError, LookupError) as e:  # UnicodeError: a codec such as punycode's own
        start = getattr(e, "start", 0)
        bad_line = unix_newlines(data[:start]).count(b"\n") + 1
        text = data.decode("utf-8", errors="replace")
        encoding = "utf-8"
    surrogate = unencodable(text)
    if surrogate:
        if bad_line is None:
            bad_line = unix_newlines(text[: surrogate[0]].encode("utf-8")).count(b"\n") + 1
        text = replace_unencodable(text)
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding.removesuffix("-sig"), bad_line


# ------------------------------------------------------------------ names and spans


def _text(node) -> str:
    return node.text.decode("utf-8", errors="replace") if node is not None else ""


def _go_receiver(node) -> str:
    """`(c *Circle)` -> `Circle`; generic `(l *List[T])` -> `List`."""
    receiver = node.child_by_field_name("receiver")
    params = [c for c in receiver.named_children if c.type == "parameter_declaration"]
    if not params:
        return ""
    kind = params[0].child_by_field_name("type")
    while kind is not None and kind.type in ("pointer_type", "generic_type"):
        kind = (
            kind.named_children[0]
            if kind.type == "pointer_type"
            else kind.child_by_field_name("type")
        )
    return _text(kind)


def unit_name(node) -> str:
    """The unit's own name (not qualified); `<anonymous>` when error recovery lost it."""
    t = node.type
    if t == "assignment_expression":  # Foo.prototype.bar = function () {}
        return _text(node.child_by_field_name("left")).replace(".prototype.", ".")
    if t == "pair":  # { bar: function () {} }
        return _text(node.child_by_field_name("key")).strip("'\"")
    name = node.child_by_field_name("name") or node.child_by_field_name("property")
    text = _text(name).replace("::", ".")
    if t == "method_declaration" and node.child_by_field_name("receiver") is not None:
        receiver = _go_receiver(node)
        return f"{receiver}.{text}" if receiver and text else text
    if t == "singleton_method":  # def self.origin / def Point.origin
        owner = _text(node.child_by_field_name("object"))
        return text if owner in ("self", "") else f"{owner}.{text}"
    return text or ANONYMOUS


def _span_node(node, chains: bool = False):
    """The node whose lines the unit's code covers: the definition plus what belongs to
    it on its lines (decorators, `export`, `const x =`, `type ... struct`)."""
    parent = node.parent
    if parent is None:
        return node
    t, p = node.type, parent.type
    if t in ("function_definition", "class_definition") and p == "decorated_definition":
        return parent
    only_child = len(parent.named_children) == 1
    if t == "type_spec" and p == "type_declaration" and only_child:
        return parent
    declaration = p in ("lexical_declaration", "variable_declaration") and only_child
    if t == "assignment_expression" and chains:  # `a.get = a.header = function () {}`
        while p == "assignment_expression" and parent.child_by_field_name("right") == node:
            node, parent = parent, parent.parent
            if parent is None:
                return node
            p = parent.type
    if (t == "variable_declarator" and declaration) or (
        t == "assignment_expression" and p == "expression_statement"
    ):
        node, parent = parent, parent.parent
    if parent is not None and parent.type == "export_statement":
        return parent
    return node


def _scope(node, units: dict[tuple[int, int], str]) -> tuple[list[str], bool]:
    """Names of the enclosing units, outermost first; and whether the closest is a class."""
    names, in_class = [], None
    parent = node.parent
    while parent is not None:
        key = (parent.start_byte, parent.end_byte, parent.type)
        if key in units:
            names.append(unit_name(parent))
            if in_class is None:
                in_class = units[key] == "class"
        parent = parent.parent
    return names[::-1], bool(in_class)


def _namespaces(root, grammar: Grammar) -> list[tuple[int, int, str]]:
    """(start byte, end byte, name) of each namespace region of a file, in order.

    A block namespace (`namespace A { ... }`) covers its body; a statement one
    (`namespace A;`) covers what follows it, up to the next namespace declaration.
    """
    if grammar.namespace_query is None:
        return []
    found = sorted(
        ts_captures(grammar.namespace_query, root).get("namespace", []),
        key=lambda n: n.start_byte,
    )
    regions = []
    for i, ns in enumerate(found):
        name = ns.child_by_field_name("name")
        if name is None:  # `namespace { ... }`: the global namespace
            continue
        if ns.child_by_field_name("body") is not None:
            start, end = ns.start_byte, ns.end_byte
        else:
            start = ns.end_byte
            end = found[i + 1].start_byte if i + 1 < len(found) else root.end_byte
        regions.append((start, end, _text(name)))
    return regions


def _namespace_of(node, regions: list[tuple[int, int, str]]) -> str:
    """The prefix of a unit's symbol: its namespace and PHP's separator (`App\\Models\\`)."""
    for start, end, name in regions:
        if start <= node.start_byte and node.end_byte <= end:
            return name + "\\"
    return ""


# ------------------------------------------------------------------ doc comments


def _python_docstring(node) -> str | None:
    body = node.child_by_field_name("body")
    if body is None or not body.named_children:
        return None
    return _python_docstring_of(body.named_children[0])


def _python_docstring_of(first) -> str | None:
    """The docstring a body's first statement `first` is, or None."""
    if first.type != "expression_statement" or not first.named_children:
        return None
    string = first.named_children[0]
    if string.type != "string":
        return None
    parts = {c.type: c for c in string.children}
    if "string_start" not in parts or "string_end" not in parts:
        return None
    raw = string.text[
        parts["string_start"].end_byte - string.start_byte : parts["string_end"].start_byte
        - string.start_byte
    ]
    return inspect.cleandoc(raw.decode("utf-8", errors="replace")) or None


def clean_comment(text: str, style: str, prefix: str = "") -> str:
    """A doc comment's words without its markers (`/**`, ` * `, `//`, `#`)."""
    lines = text.split("\n")
    if style == "block":
        text = text.strip()
        text = text.removeprefix("/**").removesuffix("*/")
        lines = [re.sub(r"^\s*\*? ?", "", ln) for ln in text.split("\n")]
    else:
        lines = [re.sub(rf"^\s*{re.escape(prefix)}+ ?", "", ln) for ln in lines]
    return inspect.cleandoc("\n".join(ln.rstrip() for ln in lines))


def _first_on_line(node, lines: list[str]) -> bool:
    row, col = node.start_point
    return not lines[row][:col].strip() if row < len(lines) else False


def _doc_comment(
    start_row: int,
    comments: dict[int, object],
    grammar: Grammar,
    lines: list[str],
    detached: bool = False,
):
    """(first row, cleaned text) of the doc comment ending right above `start_row`.

    With `detached`, a `/** ... */` comment (block style) may be separated from its
    definition by blank lines (JSDoc written so, as in express), when nothing but
    whitespace lies between and it is not a file's header (`FILE_HEADER`); `//` and `#`
    lines must always touch it (Go's and RDoc's rule: a comment after a blank line is not
    the definition's).
    """
    found = []
    row = start_row - 1
    if grammar.doc_style == "block" and detached:
        while 0 <= row < len(lines) and not lines[row].strip():
            row -= 1
    gap = row < start_row - 1
    while row in comments:
        c = comments[row]
        text = _text(c)
        if not _first_on_line(c, lines):
            break
        if grammar.doc_style == "block":
            header = gap and FILE_HEADER.search(text)
            if text.startswith("/**") and text != "/**/" and not header:
                found = [c]
            break
        if not text.startswith(grammar.line_prefix) or text.startswith("#!"):
            break
        found.insert(0, c)
        row = c.start_point.row - 1
    if not found:
        return None, None
    raw = "\n".join(_text(c) for c in found)
    doc = clean_comment(raw, grammar.doc_style, grammar.line_prefix)
    return found[0].start_point.row, doc or None


# ------------------------------------------------------------------ extraction


def extract_units(
    data: bytes,
    path: str,
    grammar: Grammar | None = None,
    *,
    module_unit: bool = False,
    type_units: bool = False,
    detached_docs: bool = False,
) -> FileUnits:
    """Every function, method and class of one file's bytes; never raises for bad input.

    `path` is what the units carry (relative to the source root); `grammar` defaults to
    the one the path's extension selects (ValueError when there is none). With
    `type_units`, the grammar's other type declarations (`Grammar.types`: TS interfaces,
    type aliases and enums, Go's other types, Java annotation types) are units too, of
    kind class; with `module_unit`, the file's code outside every unit is one more unit,
    last (`_module_unit`); with `detached_docs`, a `/** */` comment above blank lines is
    its definition's doc, and a chained assignment's unit (`a.get = a.header = function
    ...`) spans the chain. The repository index asks for the first two
    (`r2ps.repo.units`; measured in docs/REPO_SEARCH.md), not the third.
    """
    grammar = grammar or grammar_for(path)
    if grammar is None:
        raise ValueError(f"{path}: no grammar for this file's extension")
    text, encoding, bad_line = decode_source(data, grammar)
    language = LANGUAGE_LABEL[grammar.name]
    out = FileUnits(path=path, language=language, undecodable_line=bad_line, encoding=encoding)
    tree = grammar.parser().parse(text.encode("utf-8"))
    root = tree.root_node
    if root.has_error:
        out.error_lines = _error_lines(root)
    lines = text.split("\n")
    captures = ts_captures(grammar.unit_query, root)
    if type_units and grammar.type_query is not None:
        types = ts_captures(grammar.type_query, root).get("class", [])
        captures = {**captures, "class": [*captures.get("class", []), *types]}
    kinds = {
        (n.start_byte, n.end_byte, n.type): kind
        for kind in ("function", "class")
        for n in captures.get(kind, [])
    }
    comments: dict[int, object] = {}
    for c in ts_captures(grammar.comment_query, root).get("comment", []):
        comments[c.end_point.row] = c  # the last comment ending on each row
    unique = {
        (n.start_byte, n.end_byte, n.type): n
        for k in ("function", "class")
        for n in captures.get(k, [])
    }
    nodes = sorted(unique.values(), key=lambda n: (n.start_byte, -n.end_byte))
    namespaces = _namespaces(root, grammar)
    for node in nodes:
        kind = kinds[(node.start_byte, node.end_byte, node.type)]
        scope, in_class = _scope(node, kinds)
        if kind == "function" and in_class:
            kind = "method"
        span = _span_node(node, chains=detached_docs)
        def_row = span.start_point.row
        end_row = span.end_point.row
        if grammar.doc_style == "docstring":
            doc_row, doc = def_row, _python_docstring(node)
        else:
            doc_row, doc = _doc_comment(def_row, comments, grammar, lines, detached_docs)
            doc_row = def_row if doc_row is None else doc_row
        out.units.append(
            Unit(
                path=path,
                language=language,
                symbol=_namespace_of(node, namespaces) + ".".join([*scope, unit_name(node)]),
                kind=kind,
                start_line=doc_row + 1,
                end_line=end_row + 1,
                def_line=def_row + 1,
                code="\n".join(lines[doc_row : end_row + 1]),
                doc=doc,
            )
        )
    if module_unit:
        module = _module_unit(path, language, grammar, root, lines, out.units, comments)
        if module is not None:
            out.units.append(module)
    return out


# ------------------------------------------------------------------ the module unit

_COMMENT_TYPES = ("comment", "line_comment", "block_comment")
_PACKAGE_FILES = {"__init__", "index"}  # named after their folder: the package itself


def module_symbol(path: str) -> str:
    """A module unit's symbol: the file's stem (`src/flask/app.py` -> `app`), or its
    folder's name for a package's own file (`__init__.py`, `index.ts` -> the folder)."""
    p = PurePosixPath(path)
    stem = p.name.split(".", 1)[0] if p.name.startswith(".") else p.stem
    stem = stem.split(".", 1)[0] or stem  # `types.d.ts`, `app.test.js` -> types, app
    if stem in _PACKAGE_FILES and p.parent.name:
        return p.parent.name
    return stem


def _header_rows(root) -> set[int]:
    """Rows of the file's leading comments that are its header (a license, a copyright,
    a file overview: `FILE_HEADER`), consecutive `#` / `//` lines taken as one comment."""
    blocks: list[list] = []
    for child in root.children:
        if child.type in ("php_tag", "text"):  # `<?php`, HTML before it
            continue
        if child.type not in _COMMENT_TYPES:
            break
        if blocks and child.start_point.row <= blocks[-1][-1].end_point.row + 1:
            blocks[-1].append(child)
        else:
            blocks.append([child])
    rows: set[int] = set()
    for block in blocks:
        if FILE_HEADER.search("\n".join(_text(c) for c in block)):
            rows.update(range(block[0].start_point.row, block[-1].end_point.row + 1))
    return rows


def _module_doc(root, grammar: Grammar, comments, lines) -> str | None:
    """A Python module's docstring, or a Go package's doc comment (above `package`)."""
    if grammar.name == "python":
        first = root.named_children[0] if root.named_children else None
        while first is not None and first.type == "comment":
            first = first.next_named_sibling
        if first is not None and first.type == "expression_statement":
            return _python_docstring_of(first)
        return None
    if grammar.name == "go":
        clause = next((c for c in root.children if c.type == "package_clause"), None)
        if clause is not None:
            return _doc_comment(clause.start_point.row, comments, grammar, lines)[1]
    return None


def _module_unit(path, language, grammar, root, lines, units, comments) -> Unit | None:
    """The file's code outside every unit, as one unit of kind `module`: its docstring,
    imports, top-level statements and declarations that are not units (a file without
    any definition: all of it), without a leading license or copyright header
    (`_header_rows`); None when nothing but blank lines is left.

    Its lines run from the first to the last line of that code, and each line of `code`
    is that line of the file, blank where it belongs to another unit: line numbers stay
    true, and the units' own code is not repeated (the tokenizers and BM25 skip the blank
    lines, so it is embedded and matched as the module-level code alone).
    """
    covered = bytearray(len(lines))
    for u in units:
        covered[u.start_line - 1 : u.end_line] = b"\x01" * (u.end_line - u.start_line + 1)
    for row in _header_rows(root):
        if row < len(lines):
            covered[row] = 1
    rows = [r for r in range(len(lines)) if not covered[r] and lines[r].strip()]
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    code = "\n".join("" if covered[r] else lines[r] for r in range(first, last + 1))
    return Unit(
        path=path,
        language=language,
        symbol=module_symbol(path),
        kind="module",
        start_line=first + 1,
        end_line=last + 1,
        def_line=first + 1,
        code=code,
        doc=_module_doc(root, grammar, comments, lines),
    )


def ts_captures(query, node) -> dict[str, list]:
    """Query captures by name (tree-sitter >= 0.25 runs queries through a QueryCursor)."""
    import tree_sitter as ts

    return ts.QueryCursor(query).captures(node)


def _error_lines(root, limit: int = 20) -> list[int]:
    """1-based lines of the first `limit` ERROR or missing nodes (depth first)."""
    out, stack = [], [root]
    while stack and len(out) < limit:
        node = stack.pop()
        if node.is_error or node.is_missing:
            out.append(node.start_point.row + 1)
            continue
        if node.has_error:
            stack.extend(reversed(node.children))
    return sorted(set(out))


# ------------------------------------------------------------------ CodeSearchNet pairs


def doc_summary(doc: str, cfg: ExtractConfig | None = None) -> str | None:
    """The query a doc comment gives: its first paragraph, Javadoc/JSDoc inline tags and
    HTML reduced to words, tag lines (`@param`, `:param`) cut; None when too short or
    generated (the same rules as Python docstrings, `pysource.docstring_summary`)."""
    doc = _INLINE_TAG_RE.sub(lambda m: m.group(1).replace("#", "."), doc)
    doc = _HTML_TAG_RE.sub("", doc)
    return docstring_summary(doc, cfg)


def pairs_from_units(
    units: list[Unit], cfg: ExtractConfig | None = None
) -> tuple[list[dict], Counter]:
    """CodeSearchNet-style pairs of documented functions and methods, and drop counts.

    The code is the function without its doc comment (its own lines from the
    definition), dedented; filters as `r2ps.data.pysource` (test functions,
    constructors, doc too short or generated, code too short or too long).
    """
    cfg = cfg or ExtractConfig()
    pairs, dropped = [], Counter()
    for u in units:
        if u.kind in ("class", "module"):
            continue
        name = u.symbol.rsplit(".", 1)[-1]
        if u.doc is None:
            dropped["no docstring"] += 1
            continue
        if "test" in name.lower():
            dropped["test function"] += 1
            continue
        if name in _CONSTRUCTORS or (name.startswith("__") and name.endswith("__")):
            dropped["constructor or magic method"] += 1
            continue
        query = doc_summary(u.doc, cfg)
        if query is None:
            dropped["docstring too short or generated"] += 1
            continue
        own = u.code.split("\n")[u.def_line - u.start_line :]
        code = textwrap.dedent("\n".join(own)).strip("\n")
        n_lines = sum(1 for ln in code.splitlines() if ln.strip())
        if n_lines < cfg.min_code_lines:
            dropped["code too short"] += 1
            continue
        if n_lines > cfg.max_code_lines:
            dropped["code too long"] += 1
            continue
        pairs.append({"query": query, "code": code, "func_name": name, "line": u.def_line})
    return pairs, dropped
