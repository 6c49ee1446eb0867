from r2ps.data.codetext import code_id, code_match_key, normalize_code, query_id

F = '''def area(w, h):
    """Area of a rectangle."""
    # multiply
    return w * h
'''


def test_whitespace_and_comments_do_not_matter():
    other = 'def area(w,h):\n  """Area of a rectangle."""\n  return w*h   # product\n'
    assert normalize_code(F) == normalize_code(other)
    assert code_id(F) == code_id(other)


def test_docstring_is_part_of_the_id_but_not_of_the_match_key():
    bare = "def area(w, h):\n    return w * h\n"
    assert code_id(F) != code_id(bare)
    assert code_match_key(F) == code_match_key(bare) == code_id(bare)


def test_indented_method_matches_its_dedented_form():
    method = "    def f(self):\n        return 1\n"
    assert code_id(method) == code_id("def f(self):\n    return 1\n")


def test_a_string_that_is_not_a_docstring_is_kept():
    a = 'def f():\n    x = 1\n    "not a docstring"\n    return x\n'
    assert '"not a docstring"' in normalize_code(a, strip_docstrings=True)


def test_untokenizable_text_still_normalises():
    assert normalize_code("def f(:\n   x  # c") == "def f(: x"


def test_ids_are_stable_and_namespaced():
    assert code_id(F) == code_id(F) and code_id(F).startswith("c")
    assert query_id("read  a file") == query_id("read a file")
    assert query_id("read a file", "a") != query_id("read a file", "b")
