"""Module units, type units and doc comments across blank lines (`r2ps.data.extract`).

A module unit is a file's code outside its functions, methods and classes (docstring,
imports, top-level statements), one per file, last: so a file of assignments, re-exports
or TypeScript types is found, and "how is the app configured" can be answered by a file.
"""

import pytest

from r2ps.data.extract import extract_units, module_symbol, pairs_from_units

# (language, path, source, (start_line, end_line) of the module unit, its non-blank code
# lines, its doc): one file per language with a definition and module-level code around it.
MODULES = [
    (
        "python",
        "app/settings.py",
        '"""Settings of the app."""\n\nimport os\n\nDEBUG = os.environ.get("DEBUG") == "1"\n'
        '\n\ndef helper():\n    return DEBUG\n\n\nif __name__ == "__main__":\n    helper()\n',
        (1, 13),
        [
            '"""Settings of the app."""',
            "import os",
            'DEBUG = os.environ.get("DEBUG") == "1"',
            'if __name__ == "__main__":',
            "    helper()",
        ],
        "Settings of the app.",
    ),
    (
        "go",
        "cfg/cfg.go",
        '// Package cfg holds settings.\npackage cfg\n\nimport "os"\n\n'
        '// Default is the default name.\nconst Default = "x"\n\n'
        "func Load() string { return os.Getenv(Default) }\n\ntype Handler func() error\n",
        (1, 11),
        [
            "// Package cfg holds settings.",
            "package cfg",
            'import "os"',
            "// Default is the default name.",
            'const Default = "x"',
            "type Handler func() error",
        ],
        "Package cfg holds settings.",
    ),
    (
        "java",
        "src/a/Util.java",
        "/*\n * Copyright 2024 The Authors.\n * Licensed under the Apache License.\n */\n"
        "package a;\n\nimport java.util.List;\n\npublic class Util {\n  void f() {}\n}\n",
        (5, 7),  # the license header is left out
        ["package a;", "import java.util.List;"],
        None,
    ),
    (
        "javascript",
        "lib/router.js",
        "'use strict';\n\nvar debug = require('debug');\n\n/** Route a request. */\n"
        "function route(req) {\n  return req;\n}\n\nmodule.exports = route;\n",
        (1, 10),
        ["'use strict';", "var debug = require('debug');", "module.exports = route;"],
        None,
    ),
    (
        "typescript",
        "src/types.ts",
        "import { Z } from './z';\n\nexport interface Options {\n  name: string;\n}\n\n"
        "export function make(o: Options): Z {\n  return new Z(o);\n}\n",
        (1, 5),  # the interface is module-level code unless type units are asked for
        ["import { Z } from './z';", "export interface Options {", "  name: string;", "}"],
        None,
    ),
    (
        "php",
        "src/Cache/Store.php",
        "<?php\n\nnamespace App\\Cache;\n\nuse Closure;\n\nclass Store\n{\n"
        "    public function get() {}\n}\n",
        (1, 5),
        ["<?php", "namespace App\\Cache;", "use Closure;"],
        None,
    ),
    (
        "ruby",
        "lib/app.rb",
        'require "json"\n\nVERSION = "1.0"\n\nmodule App\n  def self.run; end\nend\n\nApp.run\n',
        (1, 9),
        ['require "json"', 'VERSION = "1.0"', "App.run"],
        None,
    ),
]


def _module(found):
    modules = [u for u in found.units if u.kind == "module"]
    assert len(modules) <= 1 and (not modules or found.units[-1] is modules[0])
    return modules[0] if modules else None


@pytest.mark.parametrize("case", MODULES, ids=[c[0] for c in MODULES])
def test_each_language_gets_a_module_unit_of_its_top_level_code(case):
    language, path, source, span, code, doc = case
    found = extract_units(source.encode(), path, module_unit=True)
    module = _module(found)
    assert module is not None and module.language == language
    assert (module.start_line, module.end_line) == span
    assert module.def_line == module.start_line
    assert [line for line in module.code.split("\n") if line.strip()] == code
    # each line of its code is that line of the file, blank where another unit is
    source_lines = source.split("\n")[module.start_line - 1 : module.end_line]
    inside = {r for u in found.units[:-1] for r in range(u.start_line, u.end_line + 1)}
    expected = [
        "" if n in inside else line for n, line in enumerate(source_lines, module.start_line)
    ]
    assert module.code.split("\n") == expected
    assert module.doc == doc
    assert module.symbol == module_symbol(path)
    # the other units are the same as without the module unit
    plain = extract_units(source.encode(), path)
    assert found.units[:-1] == plain.units
    assert all(u.kind != "module" for u in plain.units)


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (
            "pkg/__init__.py",
            "from .core import App\nfrom .util import helper\n\n__all__ = ['App']\n",
        ),
        ("src/types.ts", "export interface A {\n  x: number;\n}\n\nexport type B = A | null;\n"),
        ("lib/constants.js", "module.exports = {\n  TIMEOUT: 30,\n  RETRIES: 3,\n};\n"),
        ("cfg/names.go", 'package cfg\n\nconst (\n\tA = "a"\n\tB = "b"\n)\n'),
        ("src/a/package-info.java", "/** The a package. */\npackage a;\n"),
        ("config/app.php", "<?php\n\nreturn [\n    'name' => 'app',\n];\n"),
        ("lib/version.rb", 'VERSION = "1.2.3"\n'),
    ],
)
def test_a_file_without_definitions_is_one_module_unit_of_all_of_it(path, source):
    found = extract_units(source.encode(), path, module_unit=True)
    assert extract_units(source.encode(), path).units == []
    (module,) = found.units
    lines = source.rstrip("\n").split("\n")
    assert (module.kind, module.start_line, module.end_line) == ("module", 1, len(lines))
    assert module.code == "\n".join(lines)


def test_type_declarations_are_units_when_asked_and_leave_the_module_unit():
    source = (
        b"import { Z } from './z';\n\n/** The options. */\nexport interface Options {\n"
        b"  name: string;\n}\n\nexport type Maybe<T> = T | null;\n\nexport enum Mode { A, B }\n"
    )
    found = extract_units(source, "src/types.ts", module_unit=True, type_units=True)
    got = [(u.symbol, u.kind, u.start_line, u.end_line, u.doc) for u in found.units]
    assert got == [
        ("Options", "class", 3, 6, "The options."),
        ("Maybe", "class", 8, 8, None),
        ("Mode", "class", 10, 10, None),
        ("types", "module", 1, 1, None),
    ]
    go = b"package h\n\ntype Handler func() error\n\ntype Alias = Handler\n\ntype S struct{}\n"
    symbols = [(u.symbol, u.kind) for u in extract_units(go, "h.go", type_units=True).units]
    assert symbols == [("Handler", "class"), ("Alias", "class"), ("S", "class")]
    assert [u.symbol for u in extract_units(go, "h.go").units] == ["S"]


def test_a_leading_license_header_is_not_module_code():
    source = b"# Copyright 2024 The Authors.\n# Licensed under the MIT license.\n\nimport os\n"
    (module,) = extract_units(source, "m.py", module_unit=True).units
    assert (module.start_line, module.end_line, module.code) == (4, 4, "import os")
    # a leading comment that is not a header stays
    source = b"// Router matches requests.\n\nvar r = 1;\n"
    (module,) = extract_units(source, "r.js", module_unit=True).units
    assert (module.start_line, module.code) == (1, "// Router matches requests.\n\nvar r = 1;")


def test_a_file_of_definitions_only_has_no_module_unit():
    source = b'"""Only docs."""\ndef f():\n    return 1\n'
    assert [
        u.kind for u in extract_units(b"def f():\n    return 1\n", "f.py", module_unit=True).units
    ] == ["function"]
    assert [u.kind for u in extract_units(source, "f.py", module_unit=True).units] == [
        "function",
        "module",
    ]
    assert extract_units(b"", "e.py", module_unit=True).units == []
    assert extract_units(b"\n\n  \n", "e.js", module_unit=True).units == []


def test_module_symbols_are_the_stem_or_the_package_folder():
    assert module_symbol("src/flask/app.py") == "app"
    assert module_symbol("src/flask/__init__.py") == "flask"
    assert module_symbol("packages/server/src/index.ts") == "src"
    assert module_symbol("src/types.d.ts") == "types"
    assert module_symbol("index.js") == "index"
    assert module_symbol("src/Illuminate/Cache/Repository.php") == "Repository"


def test_module_units_never_become_corpus_pairs():
    source = b'"""A module with a long enough docstring to be a query."""\nimport os\nx = 1\n'
    units = extract_units(source, "m.py", module_unit=True).units
    assert [u.kind for u in units] == ["module"] and units[0].doc
    assert pairs_from_units(units)[0] == []


# ------------------------------------------------------------------ doc comments


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (
            "a.js",
            b"/**\n * Return the header.\n */\n\nfunction header(name) {\n  return name;\n}\n",
        ),
        ("a.ts", b"/** Return the header. */\n\n\nexport function header(n: string) {}\n"),
        (
            "A.java",
            b"class A {\n  /** Return the header. */\n\n  String header() { return null; }\n}\n",
        ),
        ("a.php", b"<?php\n/** Return the header. */\n\nfunction header($name) {}\n"),
    ],
)
def test_a_block_doc_comment_above_blank_lines_is_attached_when_asked(path, source):
    """`detached_docs` (off in the repository index: it measured worse on semble's dev
    split, docs/REPO_SEARCH.md): JSDoc, Javadoc and PHPDoc above blank lines."""
    found = extract_units(source, path, detached_docs=True).units
    unit = next(u for u in found if u.symbol.endswith("header"))
    assert unit.doc == "Return the header."
    assert unit.code.lstrip().startswith("/**") and unit.start_line < unit.def_line
    plain = next(u for u in extract_units(source, path).units if u.symbol.endswith("header"))
    assert plain.doc is None and plain.start_line == plain.def_line


def test_a_doc_comment_is_not_attached_across_code_or_other_comments():
    source = (
        b"/** Not attached: code between. */\nvar x = 1;\nfunction a() {}\n\n"
        b"/** Not attached: a comment between. */\n\n// eslint-disable-next-line\nfunction b() {}\n\n"
        b"/**\n * @license MIT\n */\n\nfunction c() {}\n"
    )
    found = {u.symbol: u for u in extract_units(source, "a.js", detached_docs=True).units}
    assert [found[n].doc for n in "abc"] == [None, None, None]
    assert [(found[n].start_line, found[n].def_line) for n in "abc"] == [(3, 3), (8, 8), (14, 14)]
    # `//` and `#` doc comments must touch their definition (Go's and RDoc's rule)
    go = b"package p\n\n// Not a doc comment: a blank line between.\n\nfunc F() {}\n"
    (f,) = extract_units(go, "p.go", detached_docs=True).units
    assert f.doc is None and f.start_line == 5
    rb = b"# Not a doc comment.\n\ndef f\nend\n"
    (f,) = extract_units(rb, "f.rb", detached_docs=True).units
    assert f.doc is None and f.start_line == 3


def test_a_chained_assignment_unit_spans_the_chain_when_docs_may_be_detached():
    source = (
        b"/**\n * Return request header.\n */\n\nreq.get =\nreq.header = function header(name) {\n"
        b"  return name;\n};\n"
    )
    (unit,) = extract_units(source, "lib/request.js", detached_docs=True).units
    assert (unit.symbol, unit.start_line, unit.def_line, unit.end_line) == ("req.header", 1, 5, 8)
    assert unit.doc == "Return request header."
    (plain,) = extract_units(source, "lib/request.js").units  # the inner assignment alone
    assert (plain.start_line, plain.def_line, plain.end_line, plain.doc) == (6, 6, 8, None)
