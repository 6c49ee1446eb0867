"""Mining: embedding, faiss indexes and ranking-based (PS) hard negatives.

`embed` runs a retriever over a table of codes on a Ray Data actor pool and builds or
reuses the index, `index` owns the faiss indexes and their manifests, `ps` the PS
window rule and the false-negative guard, `mine` the distributed mining job that keeps
each training query's PS window.

May import: the package root, `r2ps.data` and `r2ps.models`.
"""
