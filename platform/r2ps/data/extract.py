"""Code units of a source file through tree-sitter: every function, method and class.

`extract_units(data, path)` parses one file's bytes with the grammar its extension
selects (`r2ps.data.grammars`) and returns one `Unit` per function, method and class,
documented or not, nested ones included:

- `path` as given (relative to the source root), `start_line` / `end_line` 1-based and
  inclusive, so `source_lines[start_line - 1 : end_line]` is exactly `code`;
- `code` starts at the unit's doc comment when it has one above it (Go, Java, JS/TS,
  PHP, Ruby), or at its decorators (Python), and ends with the unit;
- `symbol`: the qualified name, enclosing classes and functions joined by dots
  (`Circle.Area`, `Geo.Point.dist`, `outer.inner`), after the PHP namespace that covers
  the unit (`App\\Models\\User.save`);
- `kind`: function, method (a function directly inside a class) or class;
- `doc`: the doc comment without its comment markers (None without one).

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

from r2ps.data.errors import replace_unencodable, unencodable
from r2ps.data.grammars import LANGUAGE_LABEL, Grammar, grammar_for
from r2ps.data.pysource import ExtractConfig, docstring_summary

ANONYMOUS = "<anonymous>"
_INLINE_TAG_RE = re.compile(r"\{@(?:link|linkplain|code|literal|see)\s+([^}\s]*)[^}]*\}")
_HTML_TAG_RE = re.compile(r"</?[a-zA-Z][^>]*>")
_CONSTRUCTORS = {"constructor", "__construct", "initialize"}


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


def _span_node(node):
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
    first = body.named_children[0]
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


def _doc_comment(start_row: int, comments: dict[int, object], grammar: Grammar, lines: list[str]):
    """(first row, cleaned text) of the doc comment ending right above `start_row`."""
    found = []
    row = start_row - 1
    while row in comments:
        c = comments[row]
        text = _text(c)
        if not _first_on_line(c, lines):
            break
        if grammar.doc_style == "block":
            if text.startswith("/**") and text != "/**/":
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


def extract_units(data: bytes, path: str, grammar: Grammar | None = None) -> FileUnits:
    """Every function, method and class of one file's bytes; never raises for bad input.

    `path` is what the units carry (relative to the source root); `grammar` defaults to
    the one the path's extension selects (ValueError when there is none).
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
    kinds = {
        (n.start_byte, n.end_byte, n.type): kind
        for kind in ("function", "class")
        for n in captures.get(kind, [])
    }
    comments: dict[int, object] = {}
    for c in ts_captures(grammar.comment_query, root).get("comment", []):
        comments[c.end_point.row] = c  # the last comment ending on each row
    nodes = sorted(
        (n for kind in ("function", "class") for n in captures.get(kind, [])),
        key=lambda n: (n.start_byte, -n.end_byte),
    )
    namespaces = _namespaces(root, grammar)
    for node in nodes:
        kind = kinds[(node.start_byte, node.end_byte, node.type)]
        scope, in_class = _scope(node, kinds)
        if kind == "function" and in_class:
            kind = "method"
        span = _span_node(node)
        def_row = span.start_point.row
        end_row = span.end_point.row
        if grammar.doc_style == "docstring":
            doc_row, doc = def_row, _python_docstring(node)
        else:
            doc_row, doc = _doc_comment(def_row, comments, grammar, lines)
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
    return out


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
        if u.kind == "class":
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
