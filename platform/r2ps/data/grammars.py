"""The six CodeSearchNet languages (and TypeScript) as tree-sitter sees them.

One `Grammar` per language: the file extensions it claims, the prebuilt tree-sitter
grammar (the tree-sitter project's own `tree-sitter-<language>` wheels, which ship the
compiled parser: nothing is downloaded at run time), a query naming the nodes that are
code units (functions and methods as `@function`, classes and their kin as `@class`),
which nodes are comments, and how a doc comment is written:

- `docstring`: the first statement of the body is a string (Python);
- `block`: a `/** ... */` comment right above the definition (Javadoc, JSDoc, PHPDoc);
- `line`: consecutive `//` (Go) or `#` (Ruby: RDoc/YARD) lines right above it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

import tree_sitter as ts


@dataclass(frozen=True)
class Grammar:
    name: str  # the language label every code row carries
    extensions: tuple[str, ...]
    language: Callable[[], object]  # the grammar package's `language()` capsule
    units: str  # tree-sitter query: @function and @class captures
    comments: str  # tree-sitter query: @comment captures
    doc_style: str  # docstring | block | line
    line_prefix: str = ""  # for doc_style == "line": "//" or "#"
    # tree-sitter query: @namespace captures, declarations whose name prefixes the symbols
    # they cover (PHP: `namespace App\Models;` up to the next one, `namespace App { ... }`)
    namespaces: str = ""
    # tree-sitter query: @class captures of type declarations that are units only when asked
    # (`extract_units(..., type_units=True)`): TS interfaces, type aliases and enums, Go
    # types other than structs and interfaces, Java annotation types
    types: str = ""

    @functools.cached_property
    def ts_language(self) -> ts.Language:
        return ts.Language(self.language())

    @functools.cached_property
    def unit_query(self) -> ts.Query:
        return ts.Query(self.ts_language, self.units)

    @functools.cached_property
    def comment_query(self) -> ts.Query:
        return ts.Query(self.ts_language, self.comments)

    @functools.cached_property
    def type_query(self) -> ts.Query | None:
        return ts.Query(self.ts_language, self.types) if self.types else None

    @functools.cached_property
    def namespace_query(self) -> ts.Query | None:
        return ts.Query(self.ts_language, self.namespaces) if self.namespaces else None

    def parser(self) -> ts.Parser:
        return ts.Parser(self.ts_language)


def _python():
    import tree_sitter_python

    return tree_sitter_python.language()


def _go():
    import tree_sitter_go

    return tree_sitter_go.language()


def _java():
    import tree_sitter_java

    return tree_sitter_java.language()


def _javascript():
    import tree_sitter_javascript

    return tree_sitter_javascript.language()


def _typescript():
    import tree_sitter_typescript

    return tree_sitter_typescript.language_typescript()


def _tsx():
    import tree_sitter_typescript

    return tree_sitter_typescript.language_tsx()


def _php():
    import tree_sitter_php

    return tree_sitter_php.language_php()  # PHP with its surrounding HTML


def _ruby():
    import tree_sitter_ruby

    return tree_sitter_ruby.language()


_JS_UNITS = """
[(function_declaration) (generator_function_declaration) (method_definition)] @function
(variable_declarator value: [(arrow_function) (function_expression) (generator_function)]) @function
(assignment_expression right: [(arrow_function) (function_expression) (generator_function)]) @function
(pair value: [(arrow_function) (function_expression) (generator_function)]) @function
(class_declaration) @class
"""
_FUNCTION_VALUE = "[(arrow_function) (function_expression) (generator_function)]"
# class fields holding a function: `onClick = () => {...}` (JS) / `private onClick = ...` (TS)
_JS_FIELDS = f"(field_definition value: {_FUNCTION_VALUE}) @function\n"
_TS_FIELDS = f"(public_field_definition value: {_FUNCTION_VALUE}) @function\n"
_TS_UNITS = _JS_UNITS + _TS_FIELDS + "(abstract_class_declaration) @class\n"
_TS_TYPES = "[(interface_declaration) (type_alias_declaration) (enum_declaration)] @class"
_JS_UNITS += _JS_FIELDS

GRAMMARS: dict[str, Grammar] = {
    g.name: g
    for g in (
        Grammar(
            "python",
            (".py", ".pyi"),
            _python,
            "(function_definition) @function (class_definition) @class",
            "(comment) @comment",
            "docstring",
        ),
        Grammar(
            "go",
            (".go",),
            _go,
            "[(function_declaration) (method_declaration)] @function "
            "(type_spec type: [(struct_type) (interface_type)]) @class",
            "(comment) @comment",
            "line",
            "//",
            types="(type_spec type: [(type_identifier) (qualified_type) (generic_type) "
            "(function_type) (map_type) (slice_type) (array_type) (pointer_type) "
            "(channel_type)]) @class (type_alias) @class",
        ),
        Grammar(
            "java",
            (".java",),
            _java,
            "[(method_declaration) (constructor_declaration)] @function "
            "[(class_declaration) (interface_declaration) (enum_declaration) "
            "(record_declaration)] @class",
            "[(block_comment) (line_comment)] @comment",
            "block",
            types="(annotation_type_declaration) @class",
        ),
        Grammar(
            "javascript",
            (".js", ".mjs", ".cjs", ".jsx"),
            _javascript,
            _JS_UNITS,
            "(comment) @comment",
            "block",
        ),
        Grammar(
            "typescript",
            (".ts", ".mts", ".cts"),
            _typescript,
            _TS_UNITS,
            "(comment) @comment",
            "block",
            types=_TS_TYPES,
        ),  # fmt: skip
        Grammar("tsx", (".tsx",), _tsx, _TS_UNITS, "(comment) @comment", "block", types=_TS_TYPES),
        Grammar(
            "php",
            (".php",),
            _php,
            "[(function_definition) (method_declaration)] @function "
            "[(class_declaration) (interface_declaration) (trait_declaration) "
            "(enum_declaration)] @class",
            "(comment) @comment",
            "block",
            namespaces="(namespace_definition) @namespace",
        ),
        Grammar(
            "ruby",
            (".rb",),
            _ruby,
            "[(method) (singleton_method)] @function [(class) (module)] @class",
            "(comment) @comment",
            "line",
            "#",
        ),
    )
}
# .tsx is parsed with its own grammar but labelled TypeScript, as users name it.
LANGUAGE_LABEL = {name: ("typescript" if name == "tsx" else name) for name in GRAMMARS}
BY_EXTENSION = {ext: g for g in GRAMMARS.values() for ext in g.extensions}
LANGUAGES = tuple(sorted(set(LANGUAGE_LABEL.values())))


def grammar_for(path: str | PurePath) -> Grammar | None:
    """The grammar a file's extension selects, or None for any other file."""
    return BY_EXTENSION.get(PurePath(path).suffix.lower())
