"""tree-sitter extraction: one fixture tree per language (tests/fixtures/repos/<language>).

Each tree holds functions, methods, classes, nested definitions, doc comments, a file
with a syntax error and a binary file; tests/repo/ adds an ignored and a vendored folder.
"""

import codecs
from pathlib import Path

import pytest

from r2ps.data.extract import clean_comment, doc_summary, extract_units, pairs_from_units
from r2ps.data.grammars import GRAMMARS, LANGUAGES, grammar_for
from r2ps.repo.files import FileRules, check_content

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "repos"

# (symbol, kind, documented) of each fixture's main file, in source order.
EXPECTED = {
    "python/pkg/shapes.py": [
        ("area", "function", True),
        ("undocumented", "function", False),
        ("Circle", "class", True),
        ("Circle.__init__", "method", False),
        ("Circle.diameter", "method", True),
        ("Circle.area", "method", False),
        ("Circle.area.squared", "function", False),
        ("Circle.Unit", "class", False),
        ("Circle.Unit.scale", "method", False),
    ],
    "go/shapes/shapes.go": [
        ("Shape", "class", True),
        ("Area", "function", True),
        ("Circle", "class", True),
        ("Circle.Area", "function", True),
        ("Circle.undocumented", "function", False),
    ],
    "java/src/geo/Shapes.java": [
        ("Shapes", "class", True),
        ("Shapes.circleArea", "method", True),
        ("Shapes.Shapes", "method", False),
        ("Shapes.undocumented", "method", False),
        ("Shapes.Point", "class", True),
        ("Shapes.Point.norm", "method", True),
        ("Named", "class", False),
        ("Named.name", "method", False),
    ],
    "javascript/lib/shapes.js": [
        ("area", "function", True),
        ("double", "function", False),
        ("Circle", "class", True),
        ("Circle.onResize", "method", True),  # a class field holding a function
        ("Circle.constructor", "method", False),
        ("Circle.area", "method", True),
        ("Circle.area.squared", "function", False),
        ("Circle.grow", "function", False),  # a `//` comment is not a JSDoc comment
        ("half", "function", False),
    ],
    "typescript/src/shapes.ts": [
        ("totalArea", "function", True),
        ("Base", "class", False),
        ("Base.describe", "method", True),
        ("square", "function", False),
        ("Button", "class", False),
        ("Button.onClick", "method", True),
    ],
    "php/src/Shapes.php": [  # `namespace Geo;` covers the file
        ("Geo\\circle_area", "function", True),
        ("Geo\\undocumented", "function", False),
        ("Geo\\Circle", "class", True),
        ("Geo\\Circle.__construct", "method", False),
        ("Geo\\Circle.diameter", "method", True),
        ("Geo\\Named", "class", False),
        ("Geo\\Named.name", "method", False),
    ],
    "ruby/lib/shapes.rb": [
        ("Geo", "class", True),
        ("Geo.Circle", "class", True),
        ("Geo.Circle.initialize", "method", False),
        ("Geo.Circle.area", "method", True),
        ("Geo.Circle.unit", "method", True),
        ("Geo.Circle.undocumented", "method", False),
    ],
}
BROKEN = {
    "python": "python/pkg/broken.py",
    "go": "go/shapes/broken.go",
    "java": "java/src/geo/Broken.java",
    "javascript": "javascript/lib/broken.js",
    "typescript": "typescript/src/broken.ts",
    "php": "php/src/Broken.php",
    "ruby": "ruby/lib/broken.rb",
}


def _extract(rel: str):
    return extract_units((FIXTURES / rel).read_bytes(), rel)


def _check_lines(rel: str, units) -> None:
    """Every unit's lines, read back from the file, are its code; its name is on its
    definition line, and its doc comment (if any) is inside its code."""
    lines = (FIXTURES / rel).read_text().split("\n")
    for u in units:
        assert 1 <= u.start_line <= u.def_line <= u.end_line <= len(lines), u
        assert "\n".join(lines[u.start_line - 1 : u.end_line]) == u.code, u.symbol
        name = u.symbol.rsplit(".", 1)[-1].rsplit("\\", 1)[-1]  # past a PHP namespace
        window = "\n".join(lines[u.def_line - 1 : u.def_line + 1])  # decorators: next line
        assert name in window, (u.symbol, window)
        if u.doc:
            assert u.doc.split("\n")[0].split()[0] in u.code


def test_every_language_has_a_fixture_tree():
    assert set(LANGUAGES) == {"go", "java", "javascript", "php", "python", "ruby", "typescript"}
    assert {rel.split("/")[0] for rel in EXPECTED} == set(LANGUAGES)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_units_symbols_kinds_docs_and_lines(rel):
    found = _extract(rel)
    assert found.error_lines == [] and found.undecodable_line is None
    got = [(u.symbol, u.kind, u.doc is not None) for u in found.units]
    assert got == EXPECTED[rel]
    assert {u.language for u in found.units} == {rel.split("/")[0]}
    assert all(u.path == rel for u in found.units)
    _check_lines(rel, found.units)


@pytest.mark.parametrize("language", sorted(BROKEN))
def test_syntax_errors_are_recovered_and_their_lines_named(language):
    rel = BROKEN[language]
    found = _extract(rel)
    names = [u.symbol.rsplit(".", 1)[-1].lower() for u in found.units]
    # the function before the error and the one after it are both found
    assert "fine" in names and "after" in names, names
    assert found.error_lines, "the syntax error's line is reported"
    source = (FIXTURES / rel).read_text().split("\n")
    broken_line = next(i for i, ln in enumerate(source, 1) if "broken(" in ln.lower())
    # the error is reported on the broken function's lines
    assert any(broken_line <= line <= broken_line + 1 for line in found.error_lines)
    fine = next(u for u in found.units if u.symbol.lower().endswith("fine"))
    assert fine.doc is not None and "despite the error" in fine.doc
    _check_lines(rel, found.units)


def test_doc_comments_are_cleaned_per_style():
    units = {u.symbol: u for u in _extract("java/src/geo/Shapes.java").units}
    assert units["Shapes.circleArea"].doc.startswith(
        "Returns the area of a circle with the given {@code radius}."
    )
    assert units["Shapes.circleArea"].start_line == 8  # the Javadoc's first line
    assert units["Shapes.circleArea"].def_line == 14
    go = {u.symbol: u for u in _extract("go/shapes/shapes.go").units}
    assert go["Area"].doc == "Area returns the area of a shape.\nIt panics on a nil shape."
    rb = {u.symbol: u for u in _extract("ruby/lib/shapes.rb").units}
    assert rb["Geo.Circle.area"].doc == "The area of the circle,\npi r squared."
    py = {u.symbol: u for u in _extract("python/pkg/shapes.py").units}
    assert py["area"].doc.startswith("Return the area of a shape.\n\nWorks for")
    assert py["Circle.diameter"].code.lstrip().startswith("@property")  # decorators included
    assert clean_comment("/**\n * One.\n *   Two.\n */", "block") == "One.\n  Two."
    assert clean_comment("// a\n//  b\n//   c", "line", "//") == "a\nb\n c"


def test_doc_summary_reduces_javadoc_tags_and_html():
    doc = "Returns the <b>area</b> of {@link Shape#area the shape}.\n@param s the shape"
    assert doc_summary(doc) == "Returns the area of Shape.area."
    assert doc_summary("@return nothing") is None


def test_undecodable_bytes_are_replaced_and_their_line_named():
    data = b"def ok():\n    return 1\n\n\ndef bad():\n    return '\xff\xfe'\n"
    found = extract_units(data, "m.py")
    assert found.undecodable_line == 6
    assert [u.symbol for u in found.units] == ["ok", "bad"]
    assert "\ufffd" in found.units[1].code
    # a PEP 263 cookie is honoured: latin-1 bytes decode without replacement
    latin = b"# -*- coding: latin-1 -*-\ndef f():\n    return '\xe9'\n"
    found = extract_units(latin, "l.py")
    assert found.undecodable_line is None and found.encoding == "iso-8859-1"
    assert "\xe9" in found.units[0].code


def test_a_cookie_codec_that_gives_surrogates_is_replaced_and_its_line_named():
    """`unicode_escape` (a valid PEP 263 cookie) reads `\\ud800` as a lone surrogate,
    which UTF-8 cannot encode: the unit, its hash and the Parquet row would all fail."""
    for codec in ("unicode_escape", "raw_unicode_escape"):
        data = f"# coding: {codec}\ndef f():\n    x = '\\ud800'\n".encode()
        found = extract_units(data, "s.py")
        assert found.undecodable_line == 3, codec
        (u,) = found.units
        assert u.code == "def f():\n    x = '\ufffd'" and u.code.encode("utf-8")


def test_crlf_files_keep_their_line_numbers():
    data = b"/** Doc line. */\r\nfunction a() {\r\n  return 1;\r\n}\r\n"
    (u,) = extract_units(data, "a.js").units
    assert (u.start_line, u.def_line, u.end_line, u.doc) == (1, 2, 4, "Doc line.")


def test_lone_carriage_returns_end_lines():
    """Classic Mac OS line ends (a lone \\r) are lines, as for Python and editors: each
    unit gets its own lines, not the whole file on line 1."""
    data = b"x = 1\r\rdef a(p):\r    return p * 2\r\rdef b():\r    pass\r"
    found = extract_units(data, "cr.py")
    spans = [(u.symbol, u.start_line, u.end_line, u.code) for u in found.units]
    assert spans == [("a", 3, 4, "def a(p):\n    return p * 2"), ("b", 6, 7, "def b():\n    pass")]
    mixed = b"def a():\r\n    return 1\rdef b():\n    return '\xff'\n"
    found = extract_units(mixed, "mixed.py")
    assert [(u.start_line, u.end_line) for u in found.units] == [(1, 2), (3, 4)]
    assert found.undecodable_line == 4  # counted with the same line ends


def test_utf16_files_with_a_byte_order_mark_are_read():
    text = "def f():\r\n    return 'é'\r\n"
    for codec in ("utf-16", "utf-16-be"):
        data = (codecs.BOM_UTF16_BE if codec.endswith("be") else b"") + text.encode(codec)
        found = extract_units(data, "w.py")
        assert found.encoding == "utf-16" and found.undecodable_line is None, codec
        assert [(u.code, u.start_line, u.end_line) for u in found.units] == [
            ("def f():\n    return 'é'", 1, 2)
        ]
        assert check_content(data, FileRules()) is None  # not binary for its NUL bytes


def test_grammar_for_extensions():
    assert grammar_for("a/b.PY").name == "python"
    assert grammar_for("x.tsx").name == "tsx"
    assert grammar_for("README.md") is None
    assert all(g.ts_language is not None for g in GRAMMARS.values())
    with pytest.raises(ValueError, match="no grammar"):
        extract_units(b"", "notes.txt")


def test_pairs_from_units_follow_codesearchnet_filters():
    units = _extract("java/src/geo/Shapes.java").units
    pairs, dropped = pairs_from_units(units)
    by_name = {p["func_name"]: p for p in pairs}
    pair = by_name["circleArea"]
    assert pair["query"] == "Returns the area of a circle with the given radius."
    assert pair["code"].startswith("public static double circleArea")
    assert "/**" not in pair["code"] and "@param" not in pair["code"]
    assert dropped["no docstring"] >= 2
    go_pairs, _ = pairs_from_units(_extract("go/shapes/shapes.go").units)
    assert [(p["func_name"], p["line"]) for p in go_pairs] == [("Area", 12), ("Area", 22)]
    assert go_pairs[1]["query"] == "Area of the circle, pi r squared."


def test_php_namespaces_prefix_the_symbols_they_cover():
    """A statement namespace covers what follows it up to the next one; a block one its
    body; the unnamed block is the global namespace."""
    src = (
        b"<?php\nnamespace App\\Models;\nclass User { function save() {} }\n"
        b"function helper() {}\nnamespace Other { class K { function m() {} } }\n"
        b"namespace { function g() {} }\n"
    )
    symbols = [u.symbol for u in extract_units(src, "a.php").units]
    assert symbols == [
        "App\\Models\\User",
        "App\\Models\\User.save",
        "App\\Models\\helper",
        "Other\\K",
        "Other\\K.m",
        "g",
    ]
