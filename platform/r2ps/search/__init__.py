"""Search: the first stages and the cascade, shared by evaluation and serving.

`bm25` (the lexical first stage over identifier tokens), `fusion` (how first-stage lists
are fused: reciprocal rank fusion, or a blend of normalised scores), `signals` (repository
ranking signals over the blended candidates: tests, paths, symbols, files; `retrieval:
repo`), `cascade` (retrieve, rerank, fuse; what is served), `versions` (an index folder's
published versions and its pointer) and `live` (a searcher that follows them).
**Add a first-stage fusion rule in `fusion`, a search filter here.**

May import: the package root, `r2ps.data`, `r2ps.models` and `r2ps.mining` (the faiss index).
"""
