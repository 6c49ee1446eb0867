"""Mining: embedding, faiss indexes and ranking-based (PS) hard negatives.

`embed` runs a retriever over a table of codes on a Ray Data actor pool, `index` owns the
faiss indexes and their manifests, `corpus_index` reuses a corpus's index or rebuilds it
(embedding again only when needed), `ps` holds the PS window rule and the false-negative
guard, `mine` the mining job that keeps each training query's PS window, and `negatives`
what it writes (shards, the summary) and how the ranker reads it back.

May import: the package root, `r2ps.data` and `r2ps.models`.
"""
