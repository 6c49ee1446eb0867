"""Search filters (r2ps.search.filters): languages, gitignore-style path and exclude
globs, the errors that name the field, and the JSON Schema pattern that states the glob
rule exactly (a client generated from the OpenAPI document knows which globs pass)."""

from __future__ import annotations

import re

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2ps.search.filters import GLOB_PATTERN, LANGUAGES, FilterError, Filters, glob_problem

PATHS = [
    "src/app.py",
    "src/util/strings.py",
    "tests/test_app.py",
    "src/tests/helpers.py",
    "cmd/server/main.go",
    "cmd/server/main_test.go",
    "pkg/cmd/run.go",
    "web/app.ts",
    None,  # a corpus split's code: no file
]
LANGS = ["python", "python", "python", "python", "go", "go", "go", "typescript", "python"]


def kept(f: Filters) -> list[str | None]:
    return [p for p, keep in zip(PATHS, f.mask(PATHS, LANGS), strict=True) if keep]


def test_globs_read_as_gitignore_lines():
    assert kept(Filters(path=["tests/**"])) == ["tests/test_app.py"]  # at the root only
    assert kept(Filters(path=["tests/"])) == ["tests/test_app.py", "src/tests/helpers.py"]
    assert kept(Filters(path=["**/*_test.go"])) == ["cmd/server/main_test.go"]
    assert kept(Filters(path=["*.go"])) == [
        "cmd/server/main.go",
        "cmd/server/main_test.go",
        "pkg/cmd/run.go",
    ]
    assert kept(Filters(path=["/cmd/**"])) == ["cmd/server/main.go", "cmd/server/main_test.go"]
    assert kept(Filters(path=["cmd/"])) == [
        "cmd/server/main.go",
        "cmd/server/main_test.go",
        "pkg/cmd/run.go",
    ]
    assert kept(Filters(path=["src/*.py"])) == ["src/app.py"]  # `*` stays in its folder


def test_exclude_include_and_language_all_hold():
    everything_but_tests = Filters(exclude=["tests/", "**/*_test.go"])
    assert kept(everything_but_tests) == [
        "src/app.py",
        "src/util/strings.py",
        "cmd/server/main.go",
        "pkg/cmd/run.go",
        "web/app.ts",
        None,  # no file: no exclude glob can match it
    ]
    assert kept(Filters(language=["go"], exclude=["**/*_test.go"])) == [
        "cmd/server/main.go",
        "pkg/cmd/run.go",
    ]
    assert kept(Filters(language=["python", "typescript"], path=["src/**", "web/**"])) == [
        "src/app.py",
        "src/util/strings.py",
        "src/tests/helpers.py",
        "web/app.ts",
    ]
    assert kept(Filters(language=["ruby"])) == []
    assert not Filters() and Filters().mask(PATHS, LANGS).all()


def test_a_unit_without_a_file_matches_no_glob():
    assert None not in kept(Filters(path=["**"]))
    assert None in kept(Filters(exclude=["**"]))


def test_bad_filters_name_the_field_and_item():
    with pytest.raises(FilterError, match=r"language\[1\]: unknown language 'rust'") as e:
        Filters(language=["go", "rust"])
    assert e.value.field == "language[1]"
    cases = {
        "[ab].py": "ranges",
        "a\\*.py": "escapes",
        "!tests/**": "negation",
        "#notes": "comment",
        "   ": "blank",
        "/": "'/' alone",
    }
    for glob, why in cases.items():
        with pytest.raises(FilterError, match=re.escape(why)) as e:
            Filters(exclude=["ok/**", glob])
        assert e.value.field == "exclude[1]"
    with pytest.raises(FilterError, match=r"path: expected a list"):
        Filters(path="src/**")  # one string is not a list of globs


def test_filters_are_values():
    a = Filters(language=["go"], path=["cmd/**"])
    assert a == Filters(language=("go",), path=("cmd/**",)) and hash(a) == hash(
        Filters(["go"], ["cmd/**"])
    )
    assert a.to_dict() == {"language": ["go"], "path": ["cmd/**"]}
    assert set(LANGUAGES) >= {"python", "go", "java", "javascript", "typescript", "php", "ruby"}


def _schema_accepts(glob: str) -> bool:
    schema = {"type": "string", "pattern": GLOB_PATTERN}
    return not list(jsonschema.Draft202012Validator(schema).iter_errors(glob))


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(st.text(st.sampled_from(list("ab.*?/_- !#\\[]\t\n\u3000\x1c\x85\ufeff")), max_size=8))
def test_the_schema_pattern_states_exactly_the_glob_rule(glob):
    # The document's pattern, read by a JSON Schema validator, accepts a glob iff the
    # server does; and every accepted glob is a pattern git applies (pathspec agrees).
    assert _schema_accepts(glob) == (glob_problem(glob) is None), (glob, glob_problem(glob))
    if glob_problem(glob) is None:
        assert isinstance(Filters(path=[glob]).mask(["a/b.py"], ["python"]), np.ndarray)


def test_the_blank_escapes_hold_every_whitespace_character():
    """SPACE_ESCAPES scans up to SPACE_LIMIT (an import-time saving of `r2ps search`): no
    code point above it is whitespace in this Python's Unicode."""
    from r2ps.search.filters import SPACE_ESCAPES, SPACE_LIMIT

    assert not any(chr(c).isspace() for c in range(SPACE_LIMIT, 0x110000))
    assert "\\u3000" in SPACE_ESCAPES and "\\u0020" in SPACE_ESCAPES
