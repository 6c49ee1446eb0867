"""Repository ranking signals (r2ps.search.signals): each one moves a constructed ranking
the way its docstring says, the off switch gives the plain fused order, ties keep the
candidates' order."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2ps.config import ConfigError
from r2ps.ranking import tie_order
from r2ps.search.signals import (
    RankingSignals,
    SymbolTable,
    apply_signals,
    asks_for_tests,
    demote_tests,
    file_coherence,
    file_words,
    is_test_path,
    path_match,
    query_symbols,
    query_words,
    saturate_files,
    symbol_definition,
)


def ranked(scores, names):
    return [names[i] for i in tie_order(np.asarray(scores))]


# ------------------------------------------------------------------ tests demoted


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_app.py",
        "src/pkg/test_app.py",
        "pkg/app_test.py",
        "mux_test.go",
        "lib/router_test.rb",
        "spec/models/user_spec.rb",
        "src/test/java/com/x/ParserTest.java",
        "FooTests.java",
        "tests/Unit/CacheTest.php",
        "src/__tests__/zod.ts",
        "packages/core/src/router.test.ts",
        "lib/axios.spec.js",
        "ui/Button.test.tsx",
        "testing/helpers.go",
    ],
)
def test_test_files_of_every_language_are_recognised(path):
    assert is_test_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "app.py",
        "src/testclient.py",  # a module that is not a test
        "contest/solver.go",
        "latest/index.ts",
        "TestUtils/Helper.java",  # folder named Test*, not a test folder pattern
        "lib/attest.rb",
        "src/Testable.php",
    ],
)
def test_code_files_are_not_tests(path):
    assert not is_test_path(path)


def test_tests_are_demoted_unless_the_query_asks_for_them():
    paths = ["pkg/router_test.go", "pkg/router.go"]
    fused = np.array([1.0, 0.6])
    query = "how does the router match a path"
    demoted = demote_tests(fused, paths, query, factor=0.3)
    np.testing.assert_allclose(demoted, [0.3, 0.6])
    assert ranked(demoted, paths) == ["pkg/router.go", "pkg/router_test.go"]
    asked = demote_tests(fused, paths, "tests of the router", factor=0.3)
    np.testing.assert_allclose(asked, fused)
    assert asks_for_tests("where is the RSpec spec for users")
    assert asks_for_tests("TestClient")  # an identifier part counts
    assert not asks_for_tests("latest contest results")


# ------------------------------------------------------------------ path match


def test_query_words_drop_stopwords_and_short_words():
    assert query_words("How are routes registered in the app?") == {"routes", "registered", "app"}
    assert query_words("parseJSONFile") == {"parse", "json", "file"}
    assert query_words("open a db connection by url") == {"open", "connection", "url"}
    assert file_words("src/routing/url_map.py") == {"url", "map", "routing"}


def test_path_match_lifts_the_file_the_query_names():
    paths = ["pkg/handlers.go", "pkg/routing/tree.go", "pkg/router.go"]
    fused = np.array([1.0, 0.8, 0.7])
    query = "how does the router match routing tree nodes"
    # words: router, match, routing, tree, nodes -> tree.go holds routing+tree (2/5),
    # router.go holds router (1/5), handlers.go nothing
    lifted = path_match(fused, paths, query, weight=0.75)
    np.testing.assert_allclose(lifted, [1.0, 0.8 + 0.75 * 2 / 5, 0.7 + 0.75 / 5])
    assert ranked(lifted, paths) == ["pkg/routing/tree.go", "pkg/handlers.go", "pkg/router.go"]
    np.testing.assert_allclose(path_match(fused, paths, "how is it done", 0.75), fused)


# ------------------------------------------------------------------ symbol definition


@pytest.mark.parametrize(
    "query, names, whole",
    [
        ("parseArgs", {"parseArgs"}, True),
        ("QueryBuilder", {"QueryBuilder"}, True),
        ("Flask", {"Flask"}, True),
        ("load_dotenv", {"load_dotenv"}, True),
        ("_make_timedelta", {"_make_timedelta"}, True),
        ("Flask.route", {"route"}, True),
        ("Illuminate\\Cache\\Repository", {"Repository"}, True),
        ("ActiveRecord::Base", {"Base"}, True),
        ("  Blueprint  ", {"Blueprint"}, True),
        ("where is parseArgs called", {"parseArgs"}, False),
        ("how does the QueryBuilder join", {"QueryBuilder"}, False),
        ("How are routes registered", set(), False),  # capitalised prose is not a symbol
        ("routing", set(), False),  # a lower-case word is a word
    ],
)
def test_query_symbols(query, names, whole):
    assert query_symbols(query) == (frozenset(names), whole if names else False)


def test_symbol_definition_lifts_the_definition_over_its_callers():
    paths = ["src/cli.ts", "src/main.ts", "src/args/parseArgs.ts", "src/other.ts"]
    symbols = ["runCli", "Main.parseArgs", "parseArgs", "parseArgsLater"]
    fused = np.array([1.0, 0.2, 0.1, 0.9])
    lifted = symbol_definition(fused, paths, symbols, "parseArgs", 1.0, 1.5, 0.5)
    # Main.parseArgs: + 1.0 * top; parseArgs in parseArgs.ts: + 1.5 * top; others unchanged
    np.testing.assert_allclose(lifted, [1.0, 1.2, 1.6, 0.9])
    assert ranked(lifted, paths)[:2] == ["src/args/parseArgs.ts", "src/main.ts"]
    # inside a sentence the lift is halved
    half = symbol_definition(fused, paths, symbols, "who calls parseArgs here", 1.0, 1.5, 0.5)
    np.testing.assert_allclose(half, [1.0, 0.7, 0.85, 0.9])
    np.testing.assert_allclose(
        symbol_definition(fused, paths, symbols, "parse the arguments", 1.0, 1.5, 0.5), fused
    )


def test_symbol_table_finds_definitions_outside_the_candidates():
    table = SymbolTable(["App.route", None, "route", "Router", "Illuminate\\Routing\\route"])
    assert table.definitions("Flask.route").tolist() == [0, 2, 4]
    assert table.definitions("_route").tolist() == []
    assert table.definitions("route").tolist() == []  # a lower-case word is a word
    assert table.definitions("how does the Router work").tolist() == []  # not camelCase
    assert table.definitions("Router").tolist() == [3]


# ------------------------------------------------------------------ file coherence


def test_coherence_lifts_the_best_unit_of_the_file_most_candidates_come_from():
    paths = ["one.py", "many.py", "many.py", "many.py", "other.py"]
    fused = np.array([1.0, 0.95, 0.6, 0.6, 0.9])
    lifted = file_coherence(fused, paths, weight=0.2)
    # sums: one 1.0, many 2.15, other 0.9; each file's best unit + 0.2 * 1.0 * sum / 2.15
    expected = fused.copy()
    expected[[0, 1, 4]] += 0.2 * np.array([1.0, 2.15, 0.9]) / 2.15
    np.testing.assert_allclose(lifted, expected)
    assert ranked(lifted, paths)[0] == "many.py"
    assert ranked(fused, paths)[0] == "one.py"


# ------------------------------------------------------------------ file saturation


def test_saturation_spreads_the_top_over_files():
    paths = ["a.py", "a.py", "a.py", "b.py"]
    fused = np.array([1.0, 0.9, 0.8, 0.5])
    spread = saturate_files(fused, paths, decay=0.5)
    np.testing.assert_allclose(spread, [1.0, 0.45, 0.2, 0.5])
    assert ranked(spread, paths) == ["a.py", "b.py", "a.py", "a.py"]
    np.testing.assert_allclose(saturate_files(fused, paths, decay=1.0), fused)


def test_saturation_decays_by_rank_and_ties_keep_the_candidates_order():
    # units 1 and 2 of x.py tie: the earlier candidate counts as listed first
    paths = ["y.py", "x.py", "x.py"]
    spread = saturate_files(np.array([0.5, 0.8, 0.8]), paths, decay=0.5)
    np.testing.assert_allclose(spread, [0.5, 0.8, 0.4])
    assert tie_order(spread).tolist() == [1, 0, 2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 10.0, allow_nan=False), st.sampled_from("abcd")),
        min_size=1,
        max_size=30,
    ),
    st.floats(0.0, 1.0),
)
def test_saturation_keeps_each_files_first_and_never_lifts(rows, decay):
    scores = np.array([s for s, _ in rows])
    paths = [p for _, p in rows]
    spread = saturate_files(scores, paths, decay)
    assert (spread <= scores).all()
    firsts = {}
    for i in tie_order(scores):  # each file's first unit by the tie rule keeps its score
        firsts.setdefault(paths[i], i)
    for i in firsts.values():
        assert spread[i] == scores[i]


# ------------------------------------------------------------------ all together


def candidates():
    paths = ["pkg/mux_test.go", "pkg/mux.go", "pkg/mux.go", "pkg/route.go", "pkg/tree.go"]
    symbols = ["TestRouter", "Router.ServeHTTP", "Router", "Route.Match", "node.insert"]
    fused = np.array([1.0, 0.9, 0.9, 0.6, 0.55])
    return fused, paths, symbols


def test_all_signals_change_the_fused_order():
    fused, paths, symbols = candidates()
    final = apply_signals(fused, paths, symbols, "Router", RankingSignals())
    # the test file x0.3; Router's definition + top (0.9); mux.go, most of the candidates'
    # score, lifts it again; ServeHTTP, mux.go's second unit, halves: route, tree, then it
    assert tie_order(final).tolist() == [2, 3, 4, 1, 0]
    assert tie_order(fused).tolist() == [0, 1, 2, 3, 4]


def test_the_off_switch_gives_the_plain_fused_order():
    fused, paths, symbols = candidates()
    for off in (
        RankingSignals.off(),
        RankingSignals(
            test_factor=1.0, path_weight=0.0, symbol_weight=0.0, coherence_weight=0.0,
            file_decay=1.0,
        ),
    ):  # fmt: skip
        final = apply_signals(fused, paths, symbols, "Router match test", off)
        np.testing.assert_array_equal(final, fused)
        assert tie_order(final).tolist() == [0, 1, 2, 3, 4]  # ties (1, 2) keep their order


def test_each_signal_alone_moves_the_order():
    """Every signal switched off by itself changes the ranking of some query: none is inert."""
    fused, paths, symbols = candidates()
    queries = ["Router", "how does the tree insert a node", "route matching"]
    everything = RankingSignals()
    for name, neutral in [
        ("test_factor", 1.0),
        ("path_weight", 0.0),
        ("symbol_weight", 0.0),
        ("coherence_weight", 0.0),
        ("file_decay", 1.0),
    ]:
        without = dataclasses.replace(everything, **{name: neutral})
        assert any(
            not np.allclose(
                apply_signals(fused, paths, symbols, q, everything),
                apply_signals(fused, paths, symbols, q, without),
            )
            for q in queries
        ), name


def test_bad_input_and_settings_are_named():
    fused, paths, symbols = candidates()
    with pytest.raises(ValueError, match="must be"):
        apply_signals(fused[:3], paths, symbols, "x", RankingSignals())
    with pytest.raises(ValueError, match="NaN"):
        apply_signals(np.array([np.nan, 1, 1, 1, 1]), paths, symbols, "x", RankingSignals())
    with pytest.raises(ConfigError, match="test_factor=1.5"):
        RankingSignals(test_factor=1.5)
    with pytest.raises(ConfigError, match="path_weight=-1"):
        RankingSignals(path_weight=-1)
    with pytest.raises(ConfigError, match="file_decay=2"):
        RankingSignals(file_decay=2)
