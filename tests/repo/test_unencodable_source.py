"""The repository index never stops on text UTF-8 cannot encode: a file whose PEP 263
codec decodes to lone surrogates (raw_unicode_escape, unicode_escape), whose codec fails
in its own way (punycode), or that holds bytes that are not UTF-8, is indexed with the bad
text replaced, and the summary names it with its first bad line."""

import pyarrow.parquet as pq

from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES

BODY = "    total = x + 1\n    return total\n"
FILES = {
    # name: (bytes, first bad line or None)
    "escape.py": (
        b'# coding: raw_unicode_escape\ndef escape(x):\n    """Lone \\ud800 here."""\n'
        + BODY.encode(),
        3,
    ),
    "uni.py": (b"# coding: unicode_escape\ndef uni(x):\n    s = '\\udcff'\n" + BODY.encode(), 3),
    "puny.py": (b"# coding: punycode\ndef puny(x):\n" + BODY.encode(), 1),
    "bytes.js": (b"// Adds one.\nfunction bytes(x) {\n  return '\xed\xa0\x80' + x;\n}\n", 3),
    # an escape that stays an escape (UTF-8 text): nothing to name
    "literal.py": (b'def literal(x):\n    """Not \\ud800 decoded."""\n' + BODY.encode(), None),
}


def test_files_that_decode_to_text_utf8_cannot_encode_are_indexed_and_named(
    tiny_bert_dir, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    for name, (data, _) in FILES.items():
        (src / name).write_bytes(data)
    summary = index_repo(
        RepoIndexConfig(source=str(src), out=str(tmp_path / "out"), model=str(tiny_bert_dir))
    )
    assert summary["files"]["indexed"] == len(FILES)
    assert summary["undecodable_bytes"] == {
        name: line for name, (_, line) in FILES.items() if line is not None
    }
    units = pq.read_table(tmp_path / "out" / CODES)
    code = dict(zip(units["symbol"].to_pylist(), units["code"].to_pylist(), strict=True))
    assert sorted(code) == sorted(name.split(".")[0] for name in FILES)
    assert "Lone \ufffd here" in code["escape"] and "'\ufffd" in code["bytes"]
    assert "Not \\ud800 decoded" in code["literal"]
