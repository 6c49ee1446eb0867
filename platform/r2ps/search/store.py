"""The code store: code text and metadata by code id, what a search returns beside scores.

Read from a `codes.parquet` (a corpus split's, or a source-tree index's: `r2ps.repo`),
whole, into memory: a search answers with the text of its hits, and a filter reads
every unit's path and language."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.parquet as pq

from r2ps.data.schema import codes_file

# Columns of a source-tree index's codes.parquet (r2ps.repo.indexer) that hits carry along.
LOCATION_FIELDS = ("path", "start_line", "end_line", "symbol")


@dataclass
class CodeStore:
    """Code text and metadata by code id, in the file's order."""

    rows: dict[str, tuple[str, str, str]]  # code_id -> (code, language, source)
    path: str
    # code_id -> {path, start_line, end_line, symbol}, when the store has those columns
    locations: dict[str, dict] = field(default_factory=dict)

    def get(self, code_id: str) -> tuple[str, str, str]:
        """(code, language, source); KeyError naming the store for an unknown id."""
        try:
            return self.rows[code_id]
        except KeyError:
            raise KeyError(f"code id {code_id!r} is in the index but not in {self.path}") from None

    def location(self, code_id: str) -> dict:
        """Where the code is (LOCATION_FIELDS), or {} for a store without locations."""
        return self.locations.get(code_id, {})


def load_code_store(codes: str) -> CodeStore:
    """Read codes.parquet (code_id, code, language, source, and LOCATION_FIELDS when
    present) into memory. `codes`: a split folder or a .parquet file (`codes_file`)."""
    names = ["code_id", "code", "language", "source"]
    path = codes_file(codes, columns=tuple(names))
    schema_names = pq.read_schema(path).names
    located = all(n in schema_names for n in LOCATION_FIELDS)
    # ParquetFile, not read_table: one file, and no pyarrow.dataset (whose import takes
    # pandas with it: a tenth of a one-off search's cold start)
    table = pq.ParquetFile(path).read(columns=names + (list(LOCATION_FIELDS) if located else []))
    table = table.to_pydict()
    rows = {
        cid: (code, lang, src)
        for cid, code, lang, src in zip(
            table["code_id"], table["code"], table["language"], table["source"], strict=True
        )
    }
    locations = {}
    if located:
        for i, cid in enumerate(table["code_id"]):
            locations[cid] = {name: table[name][i] for name in LOCATION_FIELDS}
    return CodeStore(rows=rows, path=str(path), locations=locations)
